"""The one chokepoint where the agent calls NVML.

Everything NVML-related goes through :class:`Nvml`: it maps "this GPU or driver can't tell"
(``NotSupported``, ``FunctionNotFound``, ``NoPermission``, ``NoData``, ``NotFound``, a library
too old for a symbol) to ``None``, logs any other failure once per call site, and turns a GPU
that fell off the bus (``GpuIsLost``) into :class:`GpuLostError` so callers can mark it lost
and carry on. The binding is the real ``pynvml`` module or a fake with the same functions.
"""

from __future__ import annotations

from typing import Any, Final

import pynvml
import structlog

log = structlog.get_logger(__name__)

#: Error codes that mean "no answer here": the field is reported as null.
_UNANSWERED: Final = frozenset(
    {
        pynvml.NVML_ERROR_NOT_SUPPORTED,
        pynvml.NVML_ERROR_FUNCTION_NOT_FOUND,
        pynvml.NVML_ERROR_NO_PERMISSION,
        pynvml.NVML_ERROR_NO_DATA,
        pynvml.NVML_ERROR_NOT_FOUND,
        pynvml.NVML_ERROR_INSUFFICIENT_SIZE,
        pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH,
    }
)
#: Error codes of ``nvmlInit`` that mean there is no usable driver on this machine.
_NO_DRIVER: Final = frozenset(
    {
        pynvml.NVML_ERROR_LIBRARY_NOT_FOUND,
        pynvml.NVML_ERROR_DRIVER_NOT_LOADED,
        pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH,
        pynvml.NVML_ERROR_NO_PERMISSION,
    }
)


class NvmlUnavailableError(RuntimeError):
    """NVML could not be initialised (no driver, wrong driver); the message says why."""


class GpuLostError(RuntimeError):
    """The GPU stopped answering (``GpuIsLost``, XID 79)."""


class Nvml:
    """Calls into a ``pynvml``-shaped binding with uniform error handling.

    Args:
        binding: the ``pynvml`` module, or a fake exposing the same functions.
    """

    def __init__(self, binding: Any = pynvml) -> None:
        self.binding = binding
        self._logged: set[str] = set()

    def init(self) -> None:
        """``nvmlInit``; raises :class:`NvmlUnavailableError` with a one-line reason."""
        try:
            self.binding.nvmlInit()
        except pynvml.NVMLError as error:
            code = getattr(error, "value", None)
            reason = "no NVIDIA driver found" if code in _NO_DRIVER else "NVML failed"
            raise NvmlUnavailableError(f"{reason}: {error} (NVML error {code})") from None
        except OSError as error:
            raise NvmlUnavailableError(f"NVML could not be loaded: {error}") from None

    def shutdown(self) -> None:
        """``nvmlShutdown``, ignoring a second shutdown."""
        try:
            self.binding.nvmlShutdown()
        except pynvml.NVMLError as error:
            self._log_once("nvmlShutdown", error)

    def call(self, name: str, *args: Any) -> Any:
        """Call ``name``; NVML errors propagate (lost GPUs as :class:`GpuLostError`)."""
        try:
            return getattr(self.binding, name)(*args)
        except pynvml.NVMLError as error:
            if getattr(error, "value", None) == pynvml.NVML_ERROR_GPU_IS_LOST:
                raise GpuLostError(f"{name}: GPU is lost") from None
            raise

    def optional(self, name: str, *args: Any) -> Any | None:
        """Call ``name``; None where the GPU or driver can't answer.

        Unexpected NVML errors are logged once per function and also give None, so one
        broken field never drops a report. :class:`GpuLostError` still propagates.
        """
        try:
            return self.call(name, *args)
        except pynvml.NVMLError as error:
            if getattr(error, "value", None) not in _UNANSWERED:
                self._log_once(name, error)
            return None
        except (AttributeError, pynvml.NVMLLibraryMismatchError) as error:
            self._log_once(name, error)  # symbol missing from this binding or driver
            return None

    def _log_once(self, name: str, error: BaseException) -> None:
        if name not in self._logged:
            self._logged.add(name)
            log.warning("nvml_call_failed", call=name, error=str(error))
