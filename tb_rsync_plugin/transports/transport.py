"""Which transport fills a source's staging folder: rsync (a local folder, ssh, an rsync
daemon) or rclone (object storage, `rclone:REMOTE:PATH`).

The service calls `fetch` and `refetch` and never asks which one runs: both return an
`transfer.TransferResult` and fail with `TransferError` (or `ConfigError` when the program is
not installed) sentences.
"""

from tb_rsync_plugin import config as config_lib
from tb_rsync_plugin.transports import rsync as rsync_lib

# rclone.py is imported where an rclone source runs: rsync-only syncs start without it.


def fetch(source, staging_dir, temp_dir, on_progress=None, cancel=None, before_write=None,
          rsh=None, expect_growth=False):
    """Bring `staging_dir` up to date with `source` (see `rsync.run_rsync`).

    `before_write(grows)` is called before anything is written into staging, `grows` saying
    whether event files staged earlier may be appended to; `rsh` is the shared
    ssh login's `--rsh` and `expect_growth` says the source changed at its last sync (rsync
    only: it then appends beside its listing).
    """
    if source.is_rclone:
        from tb_rsync_plugin.transports import rclone as rclone_lib
        return rclone_lib.run_rclone(config_lib.find_rclone(), source, staging_dir, temp_dir,
                                     on_progress=on_progress, cancel=cancel,
                                     before_write=before_write)
    return rsync_lib.run_rsync(config_lib.find_rsync(), source, staging_dir, temp_dir,
                               on_progress=on_progress, cancel=cancel,
                               before_write=before_write, rsh=rsh,
                               expect_growth=expect_growth)


def refetch(source, staging_dir, temp_dir, paths, on_progress=None, cancel=None, rsh=None):
    """Fetch `paths` whole, replacing their staged copies (see `rsync.restage_files`)."""
    if source.is_rclone:
        from tb_rsync_plugin.transports import rclone as rclone_lib
        return rclone_lib.restage_files(config_lib.find_rclone(), source, staging_dir,
                                         temp_dir, paths, on_progress=on_progress,
                                         cancel=cancel)
    return rsync_lib.restage_files(config_lib.find_rsync(), source, staging_dir, temp_dir,
                                   paths, on_progress=on_progress, cancel=cancel, rsh=rsh)


def find_tools(sources):
    """Check up front that the programs `sources` need are installed: rsync for rsync
    sources, rclone only when there is an rclone source.

    Raises:
      ConfigError: naming the first missing program and how to install it.
    """
    if any(not source.is_rclone for source in sources):
        config_lib.find_rsync()
    if any(source.is_rclone for source in sources):
        config_lib.find_rclone()
