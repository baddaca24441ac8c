"""faashub: the contract shared by its components, and the command-line tool.

The deployable components (`gateway`, `queue_worker`, `provider`,
`connectors`) import this package and never each other's internals.
"""

__version__ = "0.1.0"
