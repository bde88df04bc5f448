"""Data: the phantoms, the degradations, the sources (npz, image folders, DICOM through readers/, stores) and
the one validation hold-out rule; every source ends as the ImageSet/DataInfo of dataset.py."""
