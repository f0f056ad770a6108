"""The option schemas of ``common`` (``@schema`` classes), installed by ``common.config.install_schemas``."""

from __future__ import annotations

from common.log import LoggerSpec

# One entry per class; a class's ``@schema(group, name)`` marks say which options it is.
SCHEMAS: tuple[type, ...] = (LoggerSpec,)
