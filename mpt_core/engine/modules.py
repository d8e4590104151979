"""Small module surgery every method needs: swap a submodule by name, hooks that go away."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from torch import nn


def replace_module(root: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """Put ``module`` at dotted ``name`` under ``root``; returns the module it replaced."""
    previous = root.get_submodule(name)
    owner_name, _, leaf = name.rpartition(".")
    owner = root.get_submodule(owner_name) if owner_name else root
    setattr(owner, leaf, module)
    return previous


@contextlib.contextmanager
def forward_hooks(
    modules: dict[str, nn.Module], make_hook: Callable[[str], Callable], pre: bool = False
) -> Iterator[None]:
    """Inside the block each module runs ``make_hook(name)`` as a forward hook (a forward
    pre-hook with ``pre``); every hook is removed on the way out, also on an error."""
    with contextlib.ExitStack() as stack:
        for name, module in modules.items():
            register = module.register_forward_pre_hook if pre else module.register_forward_hook
            stack.callback(register(make_hook(name)).remove)
        yield
