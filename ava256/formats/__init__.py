"""Pure readers and writers of the raw AVA-256 file formats: bytes in, numpy out.

No file-system policy, no Dask, no torch. Every reader raises ``ValueError`` naming the problem on malformed
input. The files themselves are described in ``docs/store-format.md`` (the raw tree).
"""

from ava256.formats.calibration import Calibration, read_calibration, read_krt, write_calibration
from ava256.formats.frame_list import FrameList, read_frame_list, write_frame_list
from ava256.formats.head_pose import read_head_pose, write_head_pose
from ava256.formats.images import decode_gray, decode_labels, decode_rgb, encode_avif, encode_png
from ava256.formats.keypoints import read_keypoints, write_keypoints
from ava256.formats.obj import Topology, read_obj, write_obj
from ava256.formats.ply import read_ply, write_ply
from ava256.formats.scalars import read_npy, read_scalar_txt, write_npy, write_scalar_txt
from ava256.formats.zips import ZipReader, write_stored_zip

__all__ = [
    "Calibration",
    "FrameList",
    "Topology",
    "ZipReader",
    "decode_gray",
    "decode_labels",
    "decode_rgb",
    "encode_avif",
    "encode_png",
    "read_calibration",
    "read_frame_list",
    "read_head_pose",
    "read_keypoints",
    "read_krt",
    "read_npy",
    "read_obj",
    "read_ply",
    "read_scalar_txt",
    "write_calibration",
    "write_frame_list",
    "write_head_pose",
    "write_keypoints",
    "write_npy",
    "write_obj",
    "write_ply",
    "write_scalar_txt",
    "write_stored_zip",
]
