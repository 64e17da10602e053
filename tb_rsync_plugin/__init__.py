"""tb-rsync: sync TensorBoard logs from remote machines without making runs go stale.

Data flows one way: config -> rsync into staging -> publish into the logdir -> reload
TensorBoard's runs -> freshness state -> JSON / the Sync tab / the `tb-rsync` CLI.
"""

__version__ = "0.1.0"
