"""Packaging for tb-rsync-plugin: a TensorBoard plugin and CLI that sync logs with rsync."""

import os

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def frontend_files():
    """Ship the top-level frontend/ folder inside the package (served from there)."""
    return [name for name in sorted(os.listdir(os.path.join(HERE, "frontend")))
            if name.endswith((".js", ".css", ".html"))]


setup(
    name="tb-rsync-plugin",
    version="0.1.0",
    description="TensorBoard 'Sync' tab: rsync remote training logs into a live logdir "
                "without going stale.",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=["tb_rsync_plugin", "tb_rsync_plugin.engine", "tb_rsync_plugin.publishing",
              "tb_rsync_plugin.tensorboard", "tb_rsync_plugin.transports",
              "tb_rsync_plugin.frontend"],
    package_dir={"tb_rsync_plugin.frontend": "frontend"},
    package_data={"tb_rsync_plugin.frontend": frontend_files()},
    install_requires=[
        "tensorboard>=2.10",  # the oldest row of scripts/version-matrix.py (README)
        "werkzeug>=1.0",
        "protobuf>=3.19",
        "setuptools",
        "google-crc32c>=1.5",
        "watchdog>=4",  # inotify for watched inboxes (inbox.py): no polling of big folders
        "prometheus_client>=0.17",  # metrics (engine/metrics.py); 0.17 returns its server
        "tomli>=1.1; python_version < '3.11'",
    ],
    extras_require={
        "test": [
            "pytest>=7",
            "pytest-timeout>=2",
            "hypothesis>=6",
            "playwright>=1.40",
            "wheel",
            "moto[server]>=5",  # a real S3 server on 127.0.0.1 for rclone sources
            "boto3",
            "tensorboardX>=2.6",  # a third-party writer that writes event files to S3
        ],
    },
    entry_points={
        "tensorboard_plugins": ["rsync = tb_rsync_plugin.tensorboard.plugin:RsyncPluginLoader"],
        "console_scripts": ["tb-rsync = tb_rsync_plugin.cli:main"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
