"""The config spine: option schemas in Hydra's ``ConfigStore``, objects built by ``hydra.utils.instantiate``.

How a config becomes an object (docs/architecture.md):

1. An algorithm module declares its options as a dataclass (the one place for defaults and types) and marks
   it with ``@schema("placement", "moetuner")``. The decorator only marks the class: algorithm modules
   never import Hydra, and importing them registers nothing.
2. Each package lists its schema classes in one place (``common/schemas.py``, ``moe/schemas.py``,
   ``fedgeo/schemas.py``). ``install_schemas(*classes)``, called once before Hydra composes (by
   ``runners.hydra_entry.hydra_cli`` and by the test fixture), stores each in ``ConfigStore`` as
   ``schema/<group>/<name>``, with a ``_target_`` field naming the class.
3. The option's YAML (``conf/placement/moetuner.yaml``) starts from that schema and writes only what differs
   from it (the ``_target_`` comes with the schema)::

       defaults:
         - /schema/placement/moetuner@_here_
         - _self_
       label: moetuner

   Struct mode then rejects unknown keys and converts types (``gap: 1`` becomes ``1.0``) at compose time.
   A class that names itself by a class attribute ``name`` (and has no ``label``) gets a fixed ``name``
   key too (``fixed_name``: the strategies), so that records and tables show it.
4. A runner calls ``build(cfg["placement"], "placement")``: ``instantiate`` makes the object, whose
   ``__post_init__`` checks ranges; a ``ConfigError`` there comes back naming the full key
   (``placement.gap``).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from common.errors import ConfigError, SuiteError

T = TypeVar("T")

_MARK = "__schema_options__"
_INSTALLED: set[tuple[str, str]] = set()


def schema(group: str, name: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: ``cls`` (a dataclass) is the options schema of option ``name`` of config ``group``.

    It only marks the class (no registry, no import of Hydra): the package's schema list
    (``moe/schemas.py``, ``fedgeo/schemas.py``, ``common/schemas.py``) names the class, and
    ``install_schemas`` stores it as ``schema/<group>/<name>`` with ``_target_`` set to ``cls``.
    """

    def mark(cls: type[T]) -> type[T]:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"@schema({group!r}, {name!r}) needs a dataclass, got {cls!r}")
        setattr(cls, _MARK, (*cls.__dict__.get(_MARK, ()), (group, name)))
        return cls

    return mark


def schema_options(cls: type) -> tuple[tuple[str, str], ...]:
    """The ``(group, name)`` options that ``cls`` itself declares with ``@schema`` (not its base classes')."""
    return tuple(cls.__dict__.get(_MARK, ()))


def registered(schemas: Iterable[type], group: str | None = None) -> dict[tuple[str, str], type]:
    """``{(group, name): class}`` of the classes in ``schemas``, optionally of one group."""
    return {opt: cls for cls in schemas for opt in schema_options(cls) if group is None or opt[0] == group}


def _with_target(cls: type) -> type:
    """A mutable copy of dataclass ``cls``'s fields plus ``_target_`` naming ``cls`` (what Hydra instantiates).

    A copy, not a subclass: a frozen options class would make the config node read-only.
    """
    hints = typing.get_type_hints(cls)
    fixed = fixed_name(cls)
    spec: list[tuple[str, Any, Any]] = (
        [] if fixed is None else [("name", str, dataclasses.field(default=fixed))]
    )
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = (
            dataclasses.field(default=f.default)
            if f.default is not dataclasses.MISSING
            else dataclasses.field(default_factory=f.default_factory)
            if f.default_factory is not dataclasses.MISSING
            else dataclasses.field()
        )
        spec.append((f.name, hints[f.name], default))
    target = f"{cls.__module__}.{cls.__qualname__}"
    spec.append(("_target_", str, dataclasses.field(default=target)))
    return dataclasses.make_dataclass(f"{cls.__name__}Conf", spec)


def install_schemas(*schemas: type) -> None:
    """Store every option that the classes ``schemas`` declare (``@schema``) in Hydra's ``ConfigStore``.

    Called once, before Hydra composes: by ``runners.hydra_entry.hydra_cli`` (every runner) and by the test
    fixture, with the packages' lists (``runners.hydra_entry.SCHEMAS``). Idempotent.

    Raises:
        TypeError: a class without ``@schema``.
    """
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for cls in schemas:
        options = schema_options(cls)
        if not options:
            raise TypeError(f"{cls!r} is in a schema list but declares no @schema(group, name)")
        for group, name in options:
            if (group, name) in _INSTALLED:
                continue
            store.store(group=f"schema/{group}", name=name, node=_with_target(cls))
            _INSTALLED.add((group, name))


def fixed_name(cls: type) -> str | None:
    """The name an options class writes into its config node (records and tables group by it): its
    ``ClassVar`` ``name`` (e.g. ``FedAvg.name == "fedavg"``) when it has no ``label`` field (a class with a
    ``label``, as a placement, is named in tables by that field); ``None`` otherwise. The node's ``name`` is
    fixed: ``build`` refuses another value and does not pass it to the class."""
    name = getattr(cls, "name", None)
    if not dataclasses.is_dataclass(cls) or not isinstance(name, str) or not name:
        return None
    if {f.name for f in dataclasses.fields(cls)} & {"label", "name"}:
        return None
    return name


def _without_fixed_name(plain: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """``plain`` less its ``name`` when its target fixes that name (``fixed_name``); another value is a
    ``ConfigError`` naming ``<key>.name``."""
    from hydra.utils import get_class

    if "name" not in plain:
        return plain
    try:
        cls = get_class(str(plain["_target_"]))
    except Exception:  # noqa: BLE001 - instantiate reports a target that cannot be imported
        return plain
    fixed = fixed_name(cls)
    if fixed is None:
        return plain
    if plain["name"] != fixed:
        raise ConfigError(
            f"{key}.name", f"expected {fixed!r} (the name of {plain['_target_']}), got {plain['name']!r}"
        )
    return {k: v for k, v in plain.items() if k != "name"}


def _plain(node: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, DictConfig | ListConfig):
        return OmegaConf.to_container(node, resolve=True)
    return node


def build(node: Mapping[str, Any] | Any, key: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(node)`` with errors that name the config key.

    Args:
        node: a config node with ``_target_`` (a ``DictConfig`` or a plain dict).
        key: the node's path in the whole config (``placement``, ``strategy``), used in messages.
        kwargs: extra arguments for the target (runtime objects that are not config).

    Raises:
        ConfigError: no ``_target_``, a target that cannot be imported, an unknown option, or a value that
            the object refused (its ``ConfigError`` re-keyed as ``<key>.<field>``).
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    plain = _plain(node)
    if not isinstance(plain, Mapping) or "_target_" not in plain:
        raise ConfigError(key, f"expected a config node with a _target_, got {plain!r}")
    plain = _without_fixed_name(plain, key)
    try:
        return instantiate(plain, _convert_="all", **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, ConfigError):
            raise rekey(cause, key) from None
        if isinstance(cause, SuiteError):
            raise cause from None
        if isinstance(cause, TypeError) and "unexpected keyword argument" in str(cause):
            raise ConfigError(key, f"{cause}") from None
        raise ConfigError(key, f"cannot build {plain['_target_']}: {cause or exc}") from None


def rekey(error: ConfigError, prefix: str) -> ConfigError:
    """``error`` with its key under ``prefix`` (``gap`` -> ``placement.gap``); already-prefixed keys stay."""
    if error.key == prefix or error.key.startswith(f"{prefix}."):
        return error
    return ConfigError(f"{prefix}.{error.key}", error.detail)


def names(items: Iterable[str]) -> str:
    """``a, b, c``: a choice list for messages."""
    return ", ".join(sorted(items))
