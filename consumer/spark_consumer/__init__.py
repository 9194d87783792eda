"""AWS Lambda consumer for the Spark Kinesis stream: stores records and metadata in DynamoDB.

The Lambda entry point is ``spark_consumer.handler.lambda_handler``.
"""

__version__ = "0.1.0"
