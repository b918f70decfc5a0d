"""Each module here runs workers or trainers, which read whole topics: it gets a broker of its own."""

from tests.conftest import module_broker_fixture

kafka_bootstrap = module_broker_fixture()
