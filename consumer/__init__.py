"""The stream consumer (see README.md); the Lambda code is the spark_consumer package."""
