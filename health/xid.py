"""What an NVIDIA XID error means and what NVIDIA recommends doing about it.

From NVIDIA's "XID Errors" catalogue (docs.nvidia.com/deploy/xid-errors) and its GPU debug
guidelines, shortened to what an operator of a serving cluster acts on. Pure: no Django, no NVML.
"""
from __future__ import annotations

from dataclasses import dataclass

# The recommended actions, mildest first. `RESET` and `REBOOT` take the GPU out of service: the GPU
# probe reads an XID that calls for one of them as critical.
WATCH = "watch"  # usually the application's own fault; act if it repeats
DRAIN = "drain"  # stop sending work to the GPU, restart the workload that hit it
RESET = "reset GPU"  # drain, then nvidia-smi -r (or the node's GPU reset procedure)
REBOOT = "reboot"  # drain, then reboot the node
SERVICE = "service"  # hardware: open a case with the vendor / replace the board
ACTIONS = (WATCH, DRAIN, RESET, REBOOT, SERVICE)
TAKES_THE_GPU_OUT = frozenset({RESET, REBOOT, SERVICE})


@dataclass(frozen=True)
class Xid:
    code: int
    meaning: str
    action: str

    @property
    def takes_the_gpu_out(self) -> bool:
        return self.action in TAKES_THE_GPU_OUT


KNOWN: dict[int, Xid] = {
    xid.code: xid
    for xid in (
        Xid(13, "graphics engine exception (often an out-of-bounds access in a CUDA kernel)", WATCH),
        Xid(31, "GPU memory page fault (an illegal address in the application, or a driver bug)", WATCH),
        Xid(43, "GPU stopped processing: the application hit a fault and was stopped", WATCH),
        Xid(45, "preemptive cleanup after a previous error (the process was killed or crashed)", WATCH),
        Xid(48, "double-bit ECC error: uncorrectable memory error", RESET),
        Xid(61, "internal micro-controller breakpoint/warning", RESET),
        Xid(62, "internal micro-controller halt", RESET),
        Xid(63, "ECC page retirement or row-remapping recorded", DRAIN),
        Xid(64, "ECC page retirement or row-remapping failed", RESET),
        Xid(68, "video processor exception (NVDEC)", DRAIN),
        Xid(69, "graphics engine class error", DRAIN),
        Xid(74, "NVLink error", RESET),
        Xid(79, "GPU has fallen off the bus", REBOOT),
        Xid(92, "high single-bit ECC error rate", DRAIN),
        Xid(94, "contained ECC error: only the application that used the memory is affected", DRAIN),
        Xid(95, "uncontained ECC error: every application on the GPU is affected", RESET),
        Xid(119, "GSP firmware RPC timeout", RESET),
        Xid(120, "GSP firmware error", RESET),
        Xid(140, "unrecovered ECC error: row remapping could not contain it", RESET),
    )
}


def describe(code: int) -> Xid:
    """The XID's meaning and action; one not in the table reads as unknown, to be looked up."""
    found = KNOWN.get(int(code))
    if found is not None:
        return found
    return Xid(int(code), f"XID {code}: not in Gantry's table; see NVIDIA's XID catalogue", DRAIN)
