"""``where`` filters of a search: ``field=value`` expressions parsed into parameterised SQL.

Operators: ``=``, ``!=``, ``>=``, ``<=``, ``>``, ``<`` and ``~`` (case-insensitive substring). The field name must be
a metadata column or an extra metadata key; values only ever travel as SQL parameters, never pasted into the SQL,
so ``caption=x' OR 1=1 --`` matches the literal caption ``x' OR 1=1 --``. Several expressions are AND-ed.
``field!=value`` also matches items where the field is missing (NULL).
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

TEXT_FIELDS = ("path", "key", "caption", "sha256")
NUMBER_FIELDS = ("id", "width", "height")
OPERATORS = ("!=", ">=", "<=", "=", ">", "<", "~")
_EXPRESSION = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(!=|>=|<=|=|>|<|~)(.*)$", re.DOTALL)


def allowed_fields(meta_keys: Iterable[str] = ()) -> list[str]:
    """The fields a filter may name: the columns, then the extra metadata keys (sorted)."""
    builtin = (*NUMBER_FIELDS, *TEXT_FIELDS)
    return [*builtin, *sorted(set(meta_keys) - set(builtin))]


def _number(field: str, text: str, *, integer: bool) -> int | float:
    try:
        return int(text) if integer else float(text)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise ValueError(f"filter on {field}: {text!r} is not {kind}") from None


def compile_where(expressions: Sequence[str], meta_keys: Iterable[str] = ()) -> tuple[str, list]:
    """``["width>=64", "caption~dog"]`` -> (``"(width >= ?) AND (instr(lower(caption), lower(?)) > 0)"``,
    ``[64, "dog"]``). Raises ValueError naming the allowed fields for an unknown one, or for a bad expression."""
    meta_keys = set(meta_keys)
    clauses, parameters = [], []
    for expression in expressions:
        match = _EXPRESSION.match(expression)
        if match is None:
            raise ValueError(f"cannot read the filter {expression!r}: write FIELD OP VALUE with OP one of "
                             f"{' '.join(OPERATORS)} (e.g. caption~dog, width>=256)")
        field, operator, value = match.group(1), match.group(2), match.group(3).strip()
        is_meta = field not in NUMBER_FIELDS and field not in TEXT_FIELDS
        if field in NUMBER_FIELDS:
            column, numeric = field, True
        elif field in TEXT_FIELDS:
            column, numeric = field, False
        elif field in meta_keys:
            column, numeric = "json_extract(meta, ?)", operator in (">=", "<=", ">", "<")
            parameters.append(f'$."{field}"')
        else:
            raise ValueError(f"unknown filter field {field!r}; filter on one of: "
                             f"{', '.join(allowed_fields(meta_keys))}")
        if operator == "~":
            clauses.append(f"instr(lower(CAST({column} AS TEXT)), lower(?)) > 0")
            parameters.append(value)
            continue
        if operator in (">=", "<=", ">", "<"):
            if not numeric:
                raise ValueError(f"filter on {field}: {operator} compares numbers; {field} is text "
                                 "(use = != or ~)")
            clauses.append(f"{column} {operator} ?")
            parameters.append(_number(field, value, integer=False))
            continue
        if field in NUMBER_FIELDS:
            parameter: int | float | str = _number(field, value, integer=True)
        else:
            column = f"CAST({column} AS TEXT)" if is_meta else column
            parameter = value
        if operator == "=":
            clauses.append(f"{column} = ?")
            parameters.append(parameter)
        else:
            if is_meta:
                parameters.append(parameters[-1])  # the JSON path again, for the IS NULL test
            clauses.append(f"({column} IS NULL OR {column} != ?)")
            parameters.append(parameter)
    return " AND ".join(f"({clause})" for clause in clauses), parameters
