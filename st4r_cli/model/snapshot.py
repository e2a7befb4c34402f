"""Copies of tensors to restore later, kept in host memory or spilled to a file.

The TTA keeps the adapted parameters' original values (for the deltas it outputs) and a rollback state
(the parameters and their optimiser state at the last good step). At the official size with the
default `decoders+heads` group that is 268 M parameters: 4 copies of 1.07 GB that are only read on a
rollback or at the end. `where="disk"` writes them to an unlinked temporary file (the OS page cache,
not the process, holds them) and reads them back into the live tensors without a second copy;
`where="memory"` keeps CPU copies (off the GPU on CUDA). Both restore the exact bits.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

WHERE = ("memory", "disk")


@dataclass
class _Entry:
    offset: int
    shape: tuple[int, ...]
    dtype: Any          # torch.dtype
    copy: Any = None    # the CPU copy (memory) or None (disk)


class TensorStore:
    """A list of tensors saved at one moment (`save`), read back one by one (`read`) or into live
    tensors of the same shapes (`restore_into`). Saving again replaces the previous content."""

    def __init__(self, where: str = "memory", directory: str | None = None) -> None:
        if where not in WHERE:
            raise ValueError(f"where must be one of {WHERE}, got {where!r}")
        self.where = where
        self.directory = directory
        self.entries: list[_Entry] = []
        self._file: IO[bytes] | None = None

    def save(self, tensors: list[torch.Tensor]) -> None:
        """Copy `tensors` (any devices, dtypes and shapes) into the store."""
        self.entries = []
        if self.where == "memory":
            self.entries = [_Entry(0, tuple(t.shape), t.dtype, t.detach().to("cpu", copy=True)) for t in tensors]
            return
        handle = self._handle()
        handle.seek(0)
        for tensor in tensors:
            self.entries.append(_Entry(handle.tell(), tuple(tensor.shape), tensor.dtype))
            handle.write(memoryview(_bytes_view(tensor.detach().cpu().contiguous())))
        handle.truncate()
        handle.flush()

    def read(self, index: int) -> torch.Tensor:
        """A CPU copy of the saved tensor `index`."""
        import torch

        entry = self.entries[index]
        if entry.copy is not None:
            return entry.copy.clone()
        out = torch.empty(entry.shape, dtype=entry.dtype)
        self._read_into(entry, out)
        return out

    def restore_into(self, tensors: list[torch.Tensor]) -> None:
        """Copy the saved values back into `tensors` (same count, shapes and dtypes as saved), in place."""
        import torch

        if len(tensors) != len(self.entries):
            raise ValueError(f"{len(tensors)} tensors for {len(self.entries)} saved ones")
        with torch.no_grad():
            for index, (entry, target) in enumerate(zip(self.entries, tensors)):
                if tuple(target.shape) != entry.shape or target.dtype != entry.dtype:
                    raise ValueError(f"saved {entry.shape} {entry.dtype}, target {tuple(target.shape)} {target.dtype}")
                if entry.copy is not None:
                    target.copy_(entry.copy)
                elif target.device.type == "cpu" and target.is_contiguous():
                    self._read_into(entry, target.detach())
                else:
                    target.copy_(self.read(index))

    def _read_into(self, entry: _Entry, out: torch.Tensor) -> None:
        """Fill the contiguous CPU tensor `out` with the file's bytes of `entry`."""
        handle = self._handle()
        handle.seek(entry.offset)
        view = memoryview(_bytes_view(out))
        if handle.readinto(view) != len(view):
            raise OSError("the snapshot file is shorter than what was written to it")

    def _handle(self) -> IO[bytes]:
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="st4r-snapshot-", dir=self.directory)  # noqa: SIM115 (closed by close())
        return self._file

    def close(self) -> None:
        """Drop the saved tensors (and the file)."""
        self.entries = []
        if self._file is not None:
            self._file.close()
            self._file = None


def _bytes_view(tensor: torch.Tensor) -> Any:
    """The bytes of a contiguous CPU tensor (any dtype, also 0-d) as a writable numpy uint8 array (no copy)."""
    import torch

    return tensor.reshape(-1).view(torch.uint8).numpy()


@dataclass
class TrainingSnapshot:
    """Parameters and their optimiser state (every tensor of `optimizer.state[p]`) at one moment: `take`
    and `restore` (what `optimizer.load_state_dict(deepcopy(optimizer.state_dict()))` did, with the
    copies in a `TensorStore`). The param groups (learning rates) are the caller's business."""

    store: TensorStore
    layout: list[tuple[list[str], dict[str, Any]]] = field(default_factory=list)

    def take(self, params: list[torch.Tensor], optimizer: Any) -> None:
        import torch

        tensors: list[torch.Tensor] = []
        self.layout = []
        for param in params:
            state = optimizer.state.get(param, {})
            keys = sorted(key for key, value in state.items() if torch.is_tensor(value))
            self.layout.append((keys, {key: value for key, value in state.items() if not torch.is_tensor(value)}))
            tensors += [param] + [state[key] for key in keys]
        self.store.save(tensors)

    def restore(self, params: list[torch.Tensor], optimizer: Any) -> None:
        targets: list[torch.Tensor] = []
        for param, (keys, plain) in zip(params, self.layout):
            targets.append(param)
            if not keys and not plain:
                optimizer.state.pop(param, None)
                continue
            state = optimizer.state[param]
            for key in list(state):
                if key not in keys and key not in plain:
                    del state[key]
            state.update(plain)
            for key in keys:
                index = len(targets)
                saved = self.store.entries[index]
                if key not in state or tuple(state[key].shape) != saved.shape or state[key].dtype != saved.dtype:
                    state[key] = self.store.read(index).to(param.device if saved.shape else "cpu")
                targets.append(state[key])
        self.store.restore_into(targets)
