"""Shared pytest configuration."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "backend: runs stages under another Keras backend in a subprocess "
                   "(deselect with -m 'not backend')")
