from tests.support.simulator import simulator, simulator_server  # noqa: F401 - fixtures for this package
