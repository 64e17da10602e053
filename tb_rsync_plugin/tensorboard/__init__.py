"""The TensorBoard side: the plugin and its routes, and reload, the only code that touches
TensorBoard's internals.
"""
