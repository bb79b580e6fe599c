"""silson-agent: the on-premise edge agent for 실손보험 청구 전산화.

Watches EMR export folders, validates the four standard documents, stores them encrypted and
serves them to the national relay over one mutual-TLS port.
"""

__version__ = "1.0.0"
API_REVISION = 0
