"""The operator console (issue 12): pages, REST API and live updates, acting only over MQTT.

``model`` (what the console knows, pure), ``client`` (its MQTT connection and actions),
``auth`` (login, sessions, CSRF), ``session`` + ``api`` + ``pages`` (the routes), ``app``
(mounting it all on an ``HttpServer``). See docs/console.md.
"""
