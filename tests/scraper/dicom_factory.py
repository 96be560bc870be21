"""Build real DICOM files (pydicom, compressed with GDCM) for the tests and the DICOM benchmark.

    write_dicom(path, pixels (H, W) int array, BitsStored=12, WindowCenter=..., ...)
    compress(path, "jpeg-lossless" | "jpeg2000" | "jpeg-ls" | "rle")    # in place
Attributes given as keywords go into the dataset as they are (pydicom keywords).
"""
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
SYNTAXES = {"jpeg-lossless": "JPEGLosslessProcess14_1", "jpeg2000": "JPEG2000Lossless",
            "jpeg-ls": "JPEGLSLossless", "rle": "RLELossless"}


def dataset(pixels, bits_stored=12, signed=False, photometric="MONOCHROME2", **attributes):
    """A DX dataset holding `pixels` ((H, W) ints, or (H, W, 3) uint8 for RGB; (F, H, W) frames)."""
    pixels = np.asarray(pixels)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DX_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = DX_STORAGE, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "DX"
    colour = photometric == "RGB"
    frames = pixels.shape[0] if pixels.ndim == 3 and not colour else 1
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric
    if colour:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.BitsAllocated = 8 if colour else 16
    ds.BitsStored = 8 if colour else bits_stored
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(signed)
    if colour:
        raw = pixels.astype(np.uint8)
    else:  # two's complement in BitsStored bits, as a modality writes it
        raw = (pixels.astype(np.int64) & ((1 << 16) - 1)).astype(np.uint16)
    ds.PixelData = raw.tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def write_dicom(path, pixels, preamble=True, **kwargs):
    """Write a Part-10 file (with preamble) or a bare implicit-VR dataset (preamble=False)."""
    ds = dataset(pixels, **kwargs)
    if preamble:
        ds.save_as(path, enforce_file_format=True)
    else:
        del ds.file_meta
        ds.save_as(path, implicit_vr=True, little_endian=True)
    return ds


def compress(path, syntax):
    """Re-encode a DICOM file in place with GDCM (lossless syntaxes only: exact pixels)."""
    import gdcm  # python-gdcm, a runtime dependency of the project
    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    if not reader.Read():
        raise ValueError(f"GDCM cannot read {path}")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, SYNTAXES[syntax])))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise ValueError(f"GDCM cannot encode {path} as {syntax}")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(path))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise ValueError(f"GDCM cannot write {path}")
    return pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
