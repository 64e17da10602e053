"""The one family of user-facing errors.

`str(error)` is a complete sentence that names its subject and says what to do. Long
diagnostic output (the tail of rsync's stderr, for instance) goes in `details`, which the
Sync tab shows behind a toggle and the CLI prints under the message.
"""


class SyncError(Exception):
    """A failure the user can act on; never a bug in tb-rsync."""

    def __init__(self, message, details=""):
        super().__init__(message)
        self.details = details


class ConfigError(SyncError):
    """A flag, TOML file or source definition is wrong; fix the configuration."""


class TransferError(SyncError):
    """rsync or ssh failed; the logdir is untouched and the next sync retries."""

    # HTTP requests made before it failed (rclone; None: not counted), like
    # `TransferResult.api_requests`.
    api_requests = 0


class PublishError(SyncError):
    """Files could not be published into the logdir (permissions, disk full, ...)."""


class CorruptRecordError(PublishError):
    """An event file holds a record whose length or data checksum is wrong.

    Unlike a truncated record (which just means "wait for more bytes"), a corrupt record
    never heals by waiting: nothing after it is published until the source is fixed.
    """

    def __init__(self, path, offset, reason):
        super().__init__(
            f"Event file '{path}' has a corrupt record at byte {offset} ({reason}); "
            "nothing after it is published until the file is fixed or rewritten at the source."
        )
        self.path = path
        self.offset = offset
        self.reason = reason
