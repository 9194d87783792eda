"""Names vulture (`make deadcode`) reports as unused that are used where it cannot see:
attributes read by a library (zipfile, botocore, paho's MQTT 5 properties, logging),
fields of a Lambda context and of pydantic models read through getattr or by name, and
PEP 562's module __getattr__. Regenerate with `.venv/bin/vulture --make-whitelist`
after checking that each new entry is really used."""
# ruff: noqa: F821, B018, E501

_.external_attr  # unused attribute (consumer/build_zip.py:43)
_.compress_type  # unused attribute (consumer/build_zip.py:44)
stale_metadata  # unused variable (consumer/spark_consumer/handler.py:47)
connection_tests  # unused variable (consumer/spark_consumer/handler.py:48)
_.function_version  # unused attribute (consumer/spark_consumer/poller.py:44)
_.invoked_function_arn  # unused attribute (consumer/spark_consumer/poller.py:45)
_.memory_limit_in_mb  # unused attribute (consumer/spark_consumer/poller.py:48)
_.aws_request_id  # unused attribute (consumer/spark_consumer/poller.py:49)
_.log_group_name  # unused attribute (consumer/spark_consumer/poller.py:50)
_.log_stream_name  # unused attribute (consumer/spark_consumer/poller.py:51)
_.exc_text  # unused attribute (plugins/kinesis/spark_sinks_kinesis/access.py:44)
_._advisory_refresh_timeout  # unused attribute (plugins/kinesis/spark_sinks_kinesis/access.py:244)
_._mandatory_refresh_timeout  # unused attribute (plugins/kinesis/spark_sinks_kinesis/access.py:245)
METHOD  # unused variable (plugins/kinesis/spark_sinks_kinesis/access.py:251)
_.SessionExpiryInterval  # unused attribute (plugins/mqtt-source/spark_sinks_mqtt_source/connection.py:104)
_.ReceiveMaximum  # unused attribute (plugins/mqtt-source/spark_sinks_mqtt_source/connection.py:105)
_.SessionExpiryInterval  # unused attribute (plugins/mqtt-source/spark_sinks_mqtt_source/probe.py:47)
__getattr__  # unused function (plugins/sparkplug/spark_sinks_sparkplug/__init__.py:72)
srcMachine  # unused variable (spark_sinks/config.py:41)
srcVariable  # unused variable (spark_sinks/config.py:42)
srcVariables  # unused variable (spark_sinks/config.py:49)
_.overreported  # unused attribute (spark_sinks/sink.py:183)
_.overreported  # unused attribute (spark_sinks/sink.py:205)
overreported  # unused variable (spark_sinks/status.py:55)
spool_depth  # unused variable (spark_sinks/status.py:56)
buffer_envelopes  # unused variable (spark_sinks/status.py:57)
buffer_bytes  # unused variable (spark_sinks/status.py:58)
