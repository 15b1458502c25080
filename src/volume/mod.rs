//! CT volumes: NIfTI I/O, geometry, resampling, intensity, labels.
