"""Event connectors: Kafka, SQS and cron sources that invoke functions.

Each connector subscribes to its source, maps topics to the functions whose
`topic` annotation names them, and invokes those functions. The subpackages
share one shape; they are built on top of the gateway and queue-worker.
"""
