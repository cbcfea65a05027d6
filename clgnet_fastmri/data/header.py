"""A minimal ISMRMRD XML header for converted data: only what is known about the scan.

fastmri's ``SliceDataset`` reads ``encodedSpace`` and ``reconSpace`` ``matrixSize`` (x, y, z)
and ``encodingLimits/kspace_encoding_step_1`` ``center`` and ``maximum``, from which it
derives the acquired k-space columns ``[cols // 2 - center, cols // 2 - center + maximum
+ 1)``. Converted data declares every column acquired (center ``cols // 2``, maximum
``cols - 1``): samples a source lacks (partial Fourier) are zeros in the file, not padding.
"""

from __future__ import annotations

from typing import Tuple
from xml.sax.saxutils import escape


def ismrmrd_header(rows: int, cols: int, fov_mm: Tuple[float, float, float],
                   num_slices: int, num_coils: int, protocol: str) -> bytes:
    """Header bytes for slices of ``rows x cols`` k-space reconstructed at the same size."""
    fx, fy, fz = (f"{v:g}" for v in fov_mm)
    lim = "<minimum>0</minimum><maximum>0</maximum><center>0</center>"
    xml = f"""<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">
  <measurementInformation>
    <protocolName>{escape(protocol)}</protocolName>
  </measurementInformation>
  <acquisitionSystemInformation>
    <receiverChannels>{num_coils}</receiverChannels>
  </acquisitionSystemInformation>
  <encoding>
    <encodedSpace>
      <matrixSize><x>{rows}</x><y>{cols}</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>{fx}</x><y>{fy}</y><z>{fz}</z></fieldOfView_mm>
    </encodedSpace>
    <reconSpace>
      <matrixSize><x>{rows}</x><y>{cols}</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>{fx}</x><y>{fy}</y><z>{fz}</z></fieldOfView_mm>
    </reconSpace>
    <trajectory>cartesian</trajectory>
    <encodingLimits>
      <kspace_encoding_step_1>
        <minimum>0</minimum><maximum>{cols - 1}</maximum><center>{cols // 2}</center>
      </kspace_encoding_step_1>
      <kspace_encoding_step_2>{lim}</kspace_encoding_step_2>
      <slice><minimum>0</minimum><maximum>{num_slices - 1}</maximum><center>0</center></slice>
    </encodingLimits>
  </encoding>
</ismrmrdHeader>
"""
    return xml.encode("utf-8")
