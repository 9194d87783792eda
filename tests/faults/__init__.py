"""The fault-injection suite: every test attacks one promise with a real `spark-sinks`
subprocess, organised by class, one module each:

- ``test_input.py``, ``test_config.py``: hostile input lines and config files;
- ``test_signals.py``, ``test_operations.py``: signals at every phase, operational faults;
- ``test_spool.py``, ``test_accounting.py``, ``test_secrets.py``: the spool, the
  counters' identity, private files and redaction.
"""
