"""Publishing: from staged bytes to the logdir.

TFRecord scanning, atomic writes, plan-and-apply publishing, and the rewrite journal every
process on a staging root shares.
"""
