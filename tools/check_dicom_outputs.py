#!/usr/bin/env python3
"""Check the RTSTRUCT and DICOM SEG that `medlsam segment --rtstruct --dicom-seg` wrote,
independently of the Rust code (pydicom + numpy):

- both files parse, have the right SOP class, the query's StudyInstanceUID and PatientID,
  and the same FrameOfReferenceUID (the query's, when its slices have one);
- RTSTRUCT: ROI names are the run's organ names (labels.json), every contour is
  CLOSED_PLANAR, its ContourImageSequence references one of the query's slices (SOP
  Instance UIDs read from the query folder) and lies in that slice's plane; the frame
  of reference sequence lists the query's series;
- SEG: BINARY, one segment per organ with the organ's name, frames only on slices where
  the segment is present, each frame's DerivationImage/SourceImage references a query
  slice whose ImagePositionPatient is the frame's;
- the contours, rasterised here (even-odd rule at pixel centres, a numpy scanline), and
  the SEG frames, unpacked here, match the NIfTI mask of the same run: DSC >= --min-dsc
  per organ (default 95 %).

Prints its figures; exit status 1 on any failure.

    tools/check_dicom_outputs.py --query tests/data/dicom/ircadb_001 --out OUT [--case ircadb_001]
"""

import argparse
import gzip
import json
import os
import struct
import sys

import numpy as np
import pydicom

FAILURES = []


def check(ok, what):
    if not ok:
        FAILURES.append(what)
        print(f"FAIL: {what}")
    return ok


def read_query(folder):
    """The query's CT slices: {sop_uid: (ipp, k)}, geometry, UIDs."""
    slices = []
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            try:
                d = pydicom.dcmread(p, stop_before_pixels=True)
            except Exception:
                continue
            if d.get("Modality") != "CT" or "ImagePositionPatient" not in d:
                continue
            slices.append(d)
    if not slices:
        sys.exit(f"error: no CT slices in {folder}")
    iop = np.array(slices[0].ImageOrientationPatient, dtype=float)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    slices.sort(key=lambda d: float(np.dot(np.array(d.ImagePositionPatient, float), normal)))
    q = {
        "row": row,
        "col": col,
        "normal": normal,
        "spacing": np.array(slices[0].PixelSpacing, dtype=float),  # (between rows, between columns)
        "rows": int(slices[0].Rows),
        "cols": int(slices[0].Columns),
        "ipp": [np.array(d.ImagePositionPatient, float) for d in slices],
        "uids": [str(d.SOPInstanceUID) for d in slices],
        "study": str(slices[0].StudyInstanceUID),
        "series": str(slices[0].SeriesInstanceUID),
        "patient_id": str(slices[0].get("PatientID", "")),
        "for": str(slices[0].get("FrameOfReferenceUID", "")),
    }
    q["k_of"] = {u: k for k, u in enumerate(q["uids"])}
    return q


def read_nifti(path):
    """A NIfTI-1 label map (.nii or .nii.gz): (data as [k, j, i], 4x4 sform)."""
    raw = open(path, "rb").read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if struct.unpack("<i", raw[:4])[0] != 348:
        sys.exit(f"error: {path}: not a little-endian NIfTI-1 file")
    dims = struct.unpack("<8h", raw[40:56])
    dtype = {2: np.uint8, 4: np.int16, 8: np.int32, 512: np.uint16, 256: np.int8, 768: np.uint32}[
        struct.unpack("<h", raw[70:72])[0]
    ]
    offset = int(struct.unpack("<f", raw[108:112])[0])
    nx, ny, nz = dims[1], dims[2], dims[3]
    data = np.frombuffer(raw, dtype=dtype, count=nx * ny * nz, offset=offset).reshape(nz, ny, nx)
    srow = np.array(struct.unpack("<12f", raw[280:328]), dtype=float).reshape(3, 4)
    aff = np.vstack([srow, [0, 0, 0, 1]])
    return data, aff


def nifti_on_query(q, data, aff):
    """The NIfTI mask as [k, row, col] in the query's slice order, checked to sit on the
    query's pixels (world positions within 0.01 mm)."""
    lps = np.diag([-1.0, -1.0, 1.0])
    nz = data.shape[0]
    check(nz == len(q["uids"]), f"NIfTI has {nz} slices, the query {len(q['uids'])}")
    out = np.zeros((len(q["uids"]), q["rows"], q["cols"]), dtype=data.dtype)
    inv = np.linalg.inv(aff)
    for k, ipp in enumerate(q["ipp"]):
        # DICOM pixel (col c, row r) of slice k → NIfTI voxel.
        probe = [(0, 0), (q["cols"] - 1, 0), (0, q["rows"] - 1)]
        vox = []
        for c, r in probe:
            p = ipp + c * q["spacing"][1] * q["row"] + r * q["spacing"][0] * q["col"]
            v = inv @ np.append(lps @ p, 1.0)
            vox.append(v[:3])
        vox = np.array(vox)
        if not check(np.abs(vox - np.round(vox)).max() < 1e-2, f"slice {k}: NIfTI voxels not on the DICOM pixels"):
            return out
        i0, j0, kk = np.round(vox[0]).astype(int)
        check(
            tuple(np.round(vox[1] - vox[0]).astype(int)) == (q["cols"] - 1, 0, 0)
            and tuple(np.round(vox[2] - vox[0]).astype(int)) == (0, q["rows"] - 1, 0)
            and (i0, j0) == (0, 0),
            f"slice {k}: NIfTI axes are not the DICOM columns/rows",
        )
        out[k] = data[kk]
    return out


def rasterise(polygons, rows, cols):
    """Even-odd fill at pixel centres of polygons given as (N, 2) arrays of (col, row)."""
    cnt = np.zeros((rows, cols + 1), dtype=np.int32)
    for poly in polygons:
        x0, y0 = poly[:, 0], poly[:, 1]
        x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
        keep = y0 != y1
        x0, y0, x1, y1 = x0[keep], y0[keep], x1[keep], y1[keep]
        lo = np.ceil(np.minimum(y0, y1)).astype(int)  # rows j with min <= j < max
        hi = np.ceil(np.maximum(y0, y1)).astype(int)
        n = np.maximum(hi - lo, 0)
        e = np.repeat(np.arange(len(x0)), n)
        j = lo[e] + (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n))
        xc = x0[e] + (j - y0[e]) * (x1[e] - x0[e]) / (y1[e] - y0[e])
        start = np.clip(np.floor(xc).astype(int) + 1, 0, cols)
        ok = (j >= 0) & (j < rows)
        np.add.at(cnt, (j[ok], start[ok]), 1)
    return (np.cumsum(cnt, axis=1)[:, :cols] % 2) == 1


def dsc(a, b):
    s = a.sum() + b.sum()
    return None if s == 0 else 200.0 * np.logical_and(a, b).sum() / s


def check_rtstruct(path, q, truth, names, min_dsc):
    d = pydicom.dcmread(path)
    print(f"RTSTRUCT {path}: {os.path.getsize(path)} bytes, transfer syntax {d.file_meta.TransferSyntaxUID}")
    check(d.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.3", "RTSTRUCT SOP class")
    check(d.Modality == "RTSTRUCT", "RTSTRUCT modality")
    check(d.StudyInstanceUID == q["study"], "RTSTRUCT StudyInstanceUID is the query's")
    check(str(d.get("PatientID", "")) == q["patient_id"], "RTSTRUCT PatientID is the query's")
    rfor = d.ReferencedFrameOfReferenceSequence[0]
    for_uid = str(rfor.FrameOfReferenceUID)
    if q["for"]:
        check(for_uid == q["for"], "RTSTRUCT FrameOfReferenceUID is the query's")
    series = rfor.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    check(series.SeriesInstanceUID == q["series"], "RTSTRUCT references the query's series")
    listed = [str(c.ReferencedSOPInstanceUID) for c in series.ContourImageSequence]
    check(sorted(listed) == sorted(q["uids"]), "RTSTRUCT lists every query slice in its frame of reference")
    rois = {int(r.ROINumber): str(r.ROIName) for r in d.StructureSetROISequence}
    for r in d.StructureSetROISequence:
        check(str(r.ReferencedFrameOfReferenceUID) == for_uid, f"ROI {r.ROIName}: frame of reference")
    # ROIs: the run's organs (labels.json may name more), every organ of the mask among them.
    present = {v for k, v in names.items() if (truth == int(k)).any()}
    check(set(rois.values()) <= set(names.values()), f"ROI names {sorted(rois.values())} are organ names of labels.json")
    check(present <= set(rois.values()), f"every organ of the mask ({sorted(present)}) has an ROI")
    by_name = {v: int(k) for k, v in names.items()}
    masks = {}
    n_contours, n_points = 0, 0
    for rc in d.ROIContourSequence:
        name = rois[int(rc.ReferencedROINumber)]
        per_slice = {}
        for c in getattr(rc, "ContourSequence", []):
            check(c.ContourGeometricType == "CLOSED_PLANAR", "contour type CLOSED_PLANAR")
            uid = str(c.ContourImageSequence[0].ReferencedSOPInstanceUID)
            if not check(uid in q["k_of"], f"{name}: contour references {uid}, not a query slice"):
                continue
            k = q["k_of"][uid]
            pts = np.array(c.ContourData, dtype=float).reshape(-1, 3)
            check(len(pts) == int(c.NumberOfContourPoints), "NumberOfContourPoints")
            rel = pts - q["ipp"][k]
            check(np.abs(rel @ q["normal"]).max() < 0.05, f"{name}: contour off its referenced slice's plane")
            xy = np.stack([rel @ q["row"] / q["spacing"][1], rel @ q["col"] / q["spacing"][0]], axis=1)
            per_slice.setdefault(k, []).append(xy)
            n_contours += 1
            n_points += len(pts)
        m = np.zeros((len(q["uids"]), q["rows"], q["cols"]), dtype=bool)
        for k, polys in per_slice.items():
            m[k] = rasterise(polys, q["rows"], q["cols"])
        masks[name] = m
    print(f"  {len(rois)} ROIs, {n_contours} contours, {n_points} points")
    print(f"  ROIs: {', '.join(f'{k} {v!r}' for k, v in sorted(rois.items()))}")
    for name, m in masks.items():
        t = truth == by_name[name]
        v = dsc(m, t)
        print(f"  {name:<16} contours → {int(m.sum()):>8} voxels, NIfTI {int(t.sum()):>8}, DSC {'-' if v is None else f'{v:.3f} %'}")
        check(v is None or v >= min_dsc, f"RTSTRUCT {name}: DSC {v} < {min_dsc}")
    return for_uid


def check_seg(path, q, truth, names, min_dsc, for_uid):
    d = pydicom.dcmread(path)
    print(f"SEG {path}: {os.path.getsize(path)} bytes, {d.NumberOfFrames} frames")
    check(d.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4", "SEG SOP class")
    check(d.Modality == "SEG" and d.SegmentationType == "BINARY", "SEG modality and BINARY type")
    check(d.StudyInstanceUID == q["study"], "SEG StudyInstanceUID is the query's")
    check(str(d.get("PatientID", "")) == q["patient_id"], "SEG PatientID is the query's")
    check(str(d.FrameOfReferenceUID) == (q["for"] or for_uid), "SEG FrameOfReferenceUID (the query's / the RTSTRUCT's)")
    check(int(d.BitsAllocated) == 1 and int(d.Rows) == q["rows"] and int(d.Columns) == q["cols"], "SEG pixel format")
    shared = d.SharedFunctionalGroupsSequence[0]
    iop = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    check(np.allclose(iop, np.concatenate([q["row"], q["col"]]), atol=1e-4), "SEG PlaneOrientation is the query's")
    check(np.allclose(np.array(shared.PixelMeasuresSequence[0].PixelSpacing, float), q["spacing"], atol=1e-4), "SEG PixelSpacing")
    segs = {int(s.SegmentNumber): str(s.SegmentLabel) for s in d.SegmentSequence}
    present = {v for k, v in names.items() if (truth == int(k)).any()}
    check(set(segs.values()) <= set(names.values()), f"segment labels {sorted(segs.values())} are organ names")
    check(present <= set(segs.values()), f"every organ of the mask ({sorted(present)}) has a segment")
    n = int(d.NumberOfFrames)
    rows, cols = q["rows"], q["cols"]
    bits = np.unpackbits(np.frombuffer(d.PixelData, dtype=np.uint8), bitorder="little")
    check(bits.size >= n * rows * cols, "SEG PixelData length")
    frames = bits[: n * rows * cols].reshape(n, rows, cols).astype(bool)
    masks = {name: np.zeros((len(q["uids"]), rows, cols), dtype=bool) for name in segs.values()}
    check(len(d.PerFrameFunctionalGroupsSequence) == n, "one PerFrameFunctionalGroups item per frame")
    for f, fg in enumerate(d.PerFrameFunctionalGroupsSequence):
        seg = int(fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        src = fg.DerivationImageSequence[0].SourceImageSequence[0]
        uid = str(src.ReferencedSOPInstanceUID)
        if not check(uid in q["k_of"], f"frame {f + 1}: DerivationImage references {uid}, not a query slice"):
            continue
        k = q["k_of"][uid]
        ipp = np.array(fg.PlanePositionSequence[0].ImagePositionPatient, float)
        check(np.abs(ipp - q["ipp"][k]).max() < 1e-3, f"frame {f + 1}: PlanePosition is not its source slice's")
        check(frames[f].any(), f"frame {f + 1}: an empty frame (frames only where the segment is present)")
        masks[segs[seg]][k] |= frames[f]
    by_name = {v: int(k) for k, v in names.items()}
    for name, m in masks.items():
        t = truth == by_name[name]
        present = int(t.reshape(len(q["uids"]), -1).any(axis=1).sum())
        got = int(m.reshape(len(q["uids"]), -1).any(axis=1).sum())
        v = dsc(m, t)
        print(f"  {name:<16} {got} frames ({present} slices with the organ in the NIfTI), DSC {'-' if v is None else f'{v:.3f} %'}")
        check(got == present, f"SEG {name}: frames on {got} slices, the organ is on {present}")
        check(v is None or v >= min_dsc, f"SEG {name}: DSC {v} < {min_dsc}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--query", required=True, help="the DICOM query folder")
    ap.add_argument("--out", required=True, help="the segment output folder")
    ap.add_argument("--case", help="case name (default: the query folder's name)")
    ap.add_argument("--min-dsc", type=float, default=95.0)
    a = ap.parse_args()
    case = a.case or os.path.basename(os.path.normpath(a.query)).split(".")[0]
    q = read_query(a.query)
    print(f"query {a.query}: {len(q['uids'])} slices of {q['rows']}x{q['cols']}, series {q['series']}")
    names = json.load(open(os.path.join(a.out, "labels.json")))
    data, aff = read_nifti(os.path.join(a.out, f"{case}.seg.nii.gz"))
    truth = nifti_on_query(q, data, aff)
    present = {k: v for k, v in names.items() if (truth == int(k)).any()}
    print(f"NIfTI mask: {', '.join(f'{v} {int((truth == int(k)).sum())} voxels' for k, v in present.items()) or 'empty'}")
    check(bool(present), "the NIfTI mask has an organ (nothing to compare otherwise)")
    rt = os.path.join(a.out, f"{case}.rtstruct.dcm")
    seg = os.path.join(a.out, f"{case}.seg.dcm")
    for_uid = ""
    if check(os.path.isfile(rt), f"{rt} exists"):
        for_uid = check_rtstruct(rt, q, truth, names, a.min_dsc)
    if check(os.path.isfile(seg), f"{seg} exists"):
        check_seg(seg, q, truth, names, a.min_dsc, for_uid)
    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed")
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
