"""The HTTP surface (contract 6.4): health, readiness and metrics, then the operator console.

``metrics`` (no web framework) is what the services call; ``server`` serves it. Import
``server`` only where HTTP is on: the framework costs ~0.25 s to import.
"""
