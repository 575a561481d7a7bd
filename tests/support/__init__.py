"""What every test module shares; one of each, so that a test reads the same everywhere.

- ``broker.Broker``: the Mosquitto of the ``broker`` fixture (tests/conftest.py).
- ``mqtt.observe``/``mqtt.Observer``: the one MQTT collector. It records every message a
  connection receives, publishes on that same connection (``observer.client``), and waits on
  what arrives (``wait_for``, ``first``, ``first_on``, ``nth``); ``retained_snapshot`` reads
  the retained state through it.
- ``service.running``: the one way to run a service in the test's loop (entered once ready,
  cancelled and awaited after); ``agent.running_agent``, ``station.running_station``,
  ``http.serving`` and ``secure_broker.running_auth_sync`` are built on it.

tests/test_layout.py keeps each third-party I/O library in its one home in broker_agent/.
"""
