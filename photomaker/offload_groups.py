"""How diffusers' block-level group offloading splits a model: planned, replayed and checked.

diffusers' ``apply_group_offloading(offload_type="block_level", block_modules=...)`` walks a
model from the top. A child whose *name* is in ``block_modules`` is walked in turn; a
``ModuleList`` or ``Sequential`` child becomes one group per element; every other child
joins its parent's "unmatched" group, which comes in when the parent's ``forward`` runs. A
group comes in when its leading module's ``forward`` runs.

Left to itself (no ``block_modules``) it walks the top level only. A transformers encoder keeps
its layers two or three levels down (``text_model.encoder.layers``), so it comes in whole
(text encoder 2: 1.39 GB in one group); SDXL's UNet keeps its 413M-parameter mid block among
the top-level leftovers and its largest up block (1.2B parameters, 2.4 GB) is one group.

:func:`plan_block_modules` names the way down: to every layer list, and into the elements of
a list when one of them holds more than :data:`SPLIT_FRACTION` of the model (the UNet's blocks,
then their transformer stacks). :func:`replay` walks a model as diffusers will with those
names and returns the groups it makes, with what would go wrong: a group led by a module
whose ``forward`` never runs (a list of lists, as V2's perceiver keeps its
``[attention, feed-forward]`` pairs: on a GPU a device error, on the CPU silent). A plan
with a problem is not used. bench/memory.py and the tests read the same replay;
:func:`applied_groups` reads back what diffusers actually hooked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

#: A list's elements are split further when one of them holds more than this share of the
#: model's parameters (SDXL's UNet: its three largest blocks, and in them the transformer
#: stacks, but not the 70M-parameter transformer layers).
SPLIT_FRACTION = 1 / 16


@dataclass
class Group:
    """One group of the replay: where it is, its modules, its parameter count."""

    path: str
    modules: list[nn.Module] = field(repr=False)
    parameters: int
    #: ``layer``: one element of a list; ``leftovers``: a walked module's other parts, in
    #: while that module runs.
    kind: str


def _is_list(module: nn.Module) -> bool:
    return isinstance(module, (nn.ModuleList, nn.Sequential))


def _runs_by_itself(module: nn.Module) -> bool:
    """It has a ``forward`` that the model calls (a ``ModuleList`` or ``ModuleDict`` has none)."""
    return not isinstance(module, (nn.ModuleList, nn.ModuleDict))


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _own(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters(recurse=False))


def replay(module: nn.Module, block_modules: set[str] | list[str]) -> tuple[list[Group], list[str]]:
    """The groups diffusers' block level makes of ``module`` with ``block_modules``, and the
    problems: groups that would never come in."""
    names = set(block_modules)
    groups: list[Group] = []
    problems: list[str] = []

    def visit(parent: nn.Module, path: str) -> None:
        unmatched = []
        for name, child in parent.named_children():
            where = f"{path}.{name}" if path else name
            if name in names:
                visit(child, where)
            elif _is_list(child):
                for index, element in enumerate(child):
                    if not _runs_by_itself(element):
                        problems.append(f"{where}.{index}: a group whose forward never runs")
                    groups.append(Group(f"{where}.{index}", [element], _count(element), "layer"))
            else:
                unmatched.append(child)
        own = _own(parent)
        if unmatched or own:
            if not _runs_by_itself(parent):
                problems.append(f"{path or 'the model'}: its leftovers would never come in")
            size = own + sum(_count(child) for child in unmatched)
            groups.append(Group(path, unmatched, size, "leftovers"))

    visit(module, "")
    return groups, problems


def plan_block_modules(module: nn.Module, split_fraction: float = SPLIT_FRACTION) -> list[str]:
    """The ``block_modules`` for ``module`` (see the module's docstring); ``[]`` (diffusers'
    top-level split) when no plan replays without problems."""
    limit = _count(module) * split_fraction

    def splittable(candidate: nn.Module) -> bool:  # no list of lists among its children
        return not any(
            _is_list(child) and not all(_runs_by_itself(e) for e in child)
            for child in candidate.children()
        )

    def plan(descend: bool) -> set[str]:
        names: set[str] = set()

        def walk(parent: nn.Module) -> None:
            for name, child in parent.named_children():
                if _is_list(child):
                    elements = list(child)
                    if (
                        descend
                        and all(_runs_by_itself(e) and splittable(e) for e in elements)
                        and any(_count(e) > limit for e in elements)
                    ):
                        names.update([name, *(str(i) for i in range(len(elements)))])
                        for element in elements:
                            walk(element)
                elif splittable(child) and any(_is_list(m) for m in child.modules()):
                    names.add(name)
                    walk(child)

        if splittable(module):
            walk(module)
        return names

    for descend in (True, False):
        names = plan(descend)
        if not replay(module, names)[1]:
            return sorted(names)
    return []


def block_modules_for(model: nn.Module) -> list[str]:
    """The ``block_modules`` the app offloads ``model`` with: the blocks a diffusers model
    declares itself (the VAE), else :func:`plan_block_modules`'s."""
    return list(getattr(model, "_group_offload_block_modules", None) or plan_block_modules(model))


def applied_group(module: nn.Module) -> Any | None:
    """The diffusers ``ModuleGroup`` whose hook sits on ``module``, if any."""
    registry = getattr(module, "_diffusers_hook", None)
    hook = registry.get_hook("group_offloading") if registry is not None else None
    return hook.group if hook is not None else None


def applied_groups(model: nn.Module) -> list[Any]:
    """Every group diffusers hooked into ``model`` (each once)."""
    groups = {}
    for module in model.modules():
        group = applied_group(module)
        if group is not None:
            groups[id(group)] = group
    return list(groups.values())


def largest_at_once(module: nn.Module, block_modules: set[str] | list[str]) -> int:
    """Parameters of ``module`` on the GPU at once while it runs offloaded with
    ``block_modules``, at most: every leftovers group (each stays while its module runs; all
    counted, an upper bound) plus the two largest layer groups (the one computing and the
    next, prefetched on the copy stream)."""
    groups, _ = replay(module, block_modules)
    leftovers = sum(g.parameters for g in groups if g.kind == "leftovers")
    layers = sorted((g.parameters for g in groups if g.kind == "layer"), reverse=True)
    return leftovers + sum(layers[:2])
