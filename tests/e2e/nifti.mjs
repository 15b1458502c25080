// A small NIfTI-1 reader for the browser tests (independent of the app's Rust code):
// gunzip when gzipped, parse the 348-byte header (either byte order), read the voxels
// and apply scl_slope/scl_inter. Also the Dice score of one label between two maps.
import zlib from "node:zlib";

const TYPES = {
  2: ["getUint8", 1], 4: ["getInt16", 2], 8: ["getInt32", 4], 16: ["getFloat32", 4], 64: ["getFloat64", 8],
  256: ["getInt8", 1], 512: ["getUint16", 2], 768: ["getUint32", 4],
};

/// Parse a NIfTI-1 file (bytes, gzipped or not): { dim, datatype, voxOffset, slope, inter,
/// pixdim, qformCode, sformCode, quatern, qoffset, srow, data (Float64Array, scaled) }.
export function readNifti(bytes) {
  let buf = Buffer.from(bytes);
  if (buf[0] === 0x1f && buf[1] === 0x8b) buf = zlib.gunzipSync(buf);
  if (buf.length < 352) throw new Error(`NIfTI too short: ${buf.length} bytes`);
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  let le = true;
  if (view.getInt32(0, true) !== 348) {
    if (view.getInt32(0, false) !== 348) throw new Error("not a NIfTI-1 file (sizeof_hdr is not 348)");
    le = false;
  }
  const magic = buf.toString("latin1", 344, 347);
  if (magic !== "n+1" && magic !== "ni1") throw new Error(`bad NIfTI-1 magic ${JSON.stringify(magic)}`);
  const i16 = (o) => view.getInt16(o, le);
  const f32 = (o) => view.getFloat32(o, le);
  const ndim = i16(40);
  const dim = Array.from({ length: ndim }, (_, a) => i16(42 + 2 * a));
  const datatype = i16(70);
  const pixdim = Array.from({ length: 8 }, (_, a) => f32(76 + 4 * a));
  const voxOffset = f32(108);
  let slope = f32(112), inter = f32(116);
  if (!Number.isFinite(slope) || slope === 0) { slope = 1; inter = 0; }
  if (!Number.isFinite(inter)) inter = 0;
  const hdr = {
    dim, datatype, pixdim, voxOffset, slope, inter,
    qformCode: i16(252), sformCode: i16(254),
    quatern: [f32(256), f32(260), f32(264)],
    qoffset: [f32(268), f32(272), f32(276)],
    srow: [0, 1, 2].map((r) => [0, 1, 2, 3].map((c) => f32(280 + 16 * r + 4 * c))),
  };
  const type = TYPES[datatype];
  if (!type) throw new Error(`unsupported NIfTI datatype ${datatype}`);
  const [getter, size] = type;
  const n = dim.reduce((a, b) => a * b, 1);
  const off = Math.round(voxOffset);
  if (off < 348 || off + n * size > buf.length) throw new Error(`NIfTI data out of range: offset ${off}, ${n} voxels of ${size} bytes, file ${buf.length}`);
  const data = new Float64Array(n);
  for (let i = 0; i < n; i++) data[i] = view[getter](off + i * size, le) * slope + inter;
  return { ...hdr, data };
}

/// Dice (%) of one label value between two label arrays of the same length; null when both lack it.
export function dice(a, b, label) {
  if (a.length !== b.length) throw new Error(`label maps differ in size: ${a.length} vs ${b.length}`);
  let inA = 0, inB = 0, both = 0;
  for (let i = 0; i < a.length; i++) {
    const x = a[i] === label, y = b[i] === label;
    if (x) inA++;
    if (y) inB++;
    if (x && y) both++;
  }
  return inA + inB === 0 ? null : (200 * both) / (inA + inB);
}

/// Axial slice indices (third axis) where a label occurs, and its voxel count.
export function labelExtent(img, label) {
  const [nx, ny, nz] = img.dim;
  const slices = new Set();
  let count = 0;
  for (let k = 0; k < nz; k++) {
    for (let o = k * nx * ny; o < (k + 1) * nx * ny; o++) {
      if (img.data[o] === label) { slices.add(k); count++; }
    }
  }
  return { slices: [...slices].sort((x, y) => x - y), count };
}
