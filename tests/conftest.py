"""Shared fixtures; each fixtures_*.py module owns one kind of real part."""

pytest_plugins = [
    "tests.fixtures_servers",      # sshd and rsync --daemon on 127.0.0.1
    "tests.fixtures_tensorboard",  # real tensorboard processes
    "tests.fixtures_browser",      # headless Chromium
    "tests.fixtures_s3",           # moto's S3 server on 127.0.0.1, an rclone remote for it
    "tests.fixtures_prometheus",   # a real Prometheus on 127.0.0.1, scraping what tests start
]
