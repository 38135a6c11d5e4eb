"""Public datasets' folders as they unpack, in tiny stand-ins with their own file and folder names:
what `fewsam info` recognises of each (images, labels, classes, splits), and what it says of the rest."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from test_dicom import write_series

from fewsam import progress
from fewsam.data import open_dataset
from fewsam.errors import DataError
from fewsam.info import dataset_info

SHAPE = (12, 10, 3)  # NIfTI x, y, z


@pytest.fixture
def notes(monkeypatch, caplog):
    """fewsam's notes of this test alone: what each process says once is said again here."""
    monkeypatch.setattr(progress, "_said", {})
    caplog.set_level("INFO", logger="fewsam")
    return caplog


def volume(path: Path, seed: int = 0, values: tuple[int, ...] = ()) -> np.ndarray:
    """A tiny volume at ``path``: random intensities, or with ``values`` a label with one block per value."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if values:
        data = np.zeros(SHAPE, np.uint8)
        for i, v in enumerate(values):
            data[1 + 3 * i:3 + 3 * i, 2:8, :] = v
    else:
        data = np.random.default_rng(seed).random(SHAPE).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return data


def picture(path: Path, mask: bool = False, value: int = 255, colour: bool = True) -> None:
    """A tiny 2D image, or a mask holding one block of ``value``, in the format its suffix names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mask:
        data = np.zeros((16, 18), np.uint8)
        data[4:10, 5:12] = value
    else:
        shape = (16, 18, 3) if colour else (16, 18)
        data = (np.random.default_rng(len(path.name)).random(shape) * 255).astype(np.uint8)
    Image.fromarray(data).save(path)


def split_sizes(root: Path) -> dict[str, tuple[int, int]]:
    """split -> (cases, labelled cases), as `fewsam info` counts them."""
    return {name: (s["cases"], s["labelled"]) for name, s in dataset_info(root)["splits"].items()}


# ---------------------------------------------------------------- 3D: a folder per case, or side by side


def test_kits_case_folders_pair_imaging_with_segmentation(tmp_path):
    for i in range(3):
        volume(tmp_path / f"case_{i:05d}" / "imaging.nii.gz", i)
        volume(tmp_path / f"case_{i:05d}" / "segmentation.nii.gz", values=(1, 2))
    ds = open_dataset(tmp_path)
    assert list(ds.entries) == ["case_00000", "case_00001", "case_00002"]
    assert ds.class_map.names == {1: "class1", 2: "class2"}
    case = ds.load("case_00001")
    assert case.image.shape == (3, 10, 12) and case.rel_path == "case_00001.nii.gz"
    assert set(np.unique(case.label)) == {0, 1, 2}
    assert split_sizes(tmp_path)["all"] == (3, 3) and split_sizes(tmp_path)["val"] == (1, 1)
    assert "case_00000/segmentation.nii.gz" in dataset_info(tmp_path)["storage"]


def test_kits21_reads_the_majority_vote_of_its_annotators(tmp_path, notes):
    for i in range(2):
        volume(tmp_path / f"case_{i:05d}" / "imaging.nii.gz", i)
        for fusion in ("AND", "MAJ", "OR"):
            volume(tmp_path / f"case_{i:05d}" / f"aggregated_{fusion}_seg.nii.gz", values=(1, 2))
        volume(tmp_path / f"case_{i:05d}" / "segmentations" / "kidney_instance-1_annotation-1.nii.gz", values=(1,))
    ds = open_dataset(tmp_path)
    assert [e.label.name for e in ds.entries.values()] == ["aggregated_MAJ_seg.nii.gz"] * 2
    assert "fewsam reads aggregated_MAJ_seg.nii.gz (named as the annotators' consensus" in notes.text


def test_brats_modalities_are_one_case_and_the_image_read_is_said(tmp_path, notes):
    for i in range(2):
        case = f"BraTS2021_{i:05d}"
        for seed, modality in enumerate(("flair", "t1", "t1ce", "t2")):
            volume(tmp_path / case / f"{case}_{modality}.nii.gz", seed)
        volume(tmp_path / case / f"{case}_seg.nii.gz", values=(1, 2, 4))
    ds = open_dataset(tmp_path)
    assert list(ds.entries) == ["BraTS2021_00000", "BraTS2021_00001"]
    assert all(e.image.name.endswith("_flair.nii.gz") and e.label.name.endswith("_seg.nii.gz")
               for e in ds.entries.values())
    assert ds.class_map.labels == [1, 2, 4]
    assert "segments one image per case, BraTS2021_00000_flair.nii.gz (the first by name" in notes.text
    assert '"dataset" object' in notes.text  # how to choose another
    assert "one of 4 image files per case" in dataset_info(tmp_path)["storage"]


def test_unlabelled_volumes_side_by_side_are_cases_and_unlabelled_modalities_one(tmp_path):
    """LiTS' test batch (test-volume-N.nii, no labels) holds cases; a BraTS validation folder one case's files."""
    for i in range(3):
        volume(tmp_path / "Testing Batch" / f"test-volume-{i}.nii", i)
    for modality in ("flair", "t1"):
        volume(tmp_path / "BraTS2021_01000" / f"BraTS2021_01000_{modality}.nii.gz")
    ds = open_dataset(tmp_path)
    assert list(ds.entries) == ["BraTS2021_01000", "Testing Batch/test-volume-0", "Testing Batch/test-volume-1",
                                "Testing Batch/test-volume-2"]
    assert not ds.has_any_label() and ds.split("val") == list(ds.entries)


def test_a_case_lacking_the_first_modality_is_named(tmp_path, notes):
    for i, modalities in enumerate((("flair", "t1"), ("flair", "t1"), ("t1", "t2"))):
        case = f"BraTS2021_{i:05d}"
        for modality in modalities:
            volume(tmp_path / case / f"{case}_{modality}.nii.gz")
        volume(tmp_path / case / f"{case}_seg.nii.gz", values=(1,))
    open_dataset(tmp_path)
    assert "images differ in kind (flair: BraTS2021_00000, BraTS2021_00001; t1: BraTS2021_00002)" in notes.text


def test_totalsegmentator_structure_masks_become_named_classes(tmp_path):
    for i, structures in enumerate((("liver", "spleen"), ("liver", "spleen", "kidney_left"))):
        volume(tmp_path / f"s{i:04d}" / "ct.nii.gz", i)
        for j, name in enumerate(structures):
            mask = np.zeros(SHAPE, np.uint8)
            mask[1 + 3 * j:3 + 3 * j, 2:8, :] = 1
            (tmp_path / f"s{i:04d}" / "segmentations").mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(mask, np.eye(4)), str(tmp_path / f"s{i:04d}" / "segmentations" / f"{name}.nii.gz"))
    ds = open_dataset(tmp_path)
    assert ds.class_map.names == {1: "kidney_left", 2: "liver", 3: "spleen"}
    label = ds.load("s0001").label
    assert [int(label[0, 2, 1 + 3 * j]) for j in range(3)] == [2, 3, 1]  # liver, spleen, kidney_left
    assert set(np.unique(ds.load("s0000").label)) == {0, 2, 3}
    assert "one binary mask per structure (s0000/segmentations/<structure>.nii.gz)" in dataset_info(tmp_path)["storage"]


def test_a_table_with_a_row_per_case_gives_attributes_and_splits(tmp_path, notes):
    """TotalSegmentator's meta.csv (semicolons): age, gender, institute, and its official split."""
    for i in range(4):
        volume(tmp_path / f"s{i:04d}" / "ct.nii.gz", i)
        volume(tmp_path / f"s{i:04d}" / "segmentations" / "liver.nii.gz", values=(1,))
    (tmp_path / "meta.csv").write_text("image_id;age;gender;institute;split\ns0000;65;m;A;train\ns0001;70;f;B;val\n"
                                       "s0002;40;f;A;test\ns0003;52;m;B;train\n")
    ds = open_dataset(tmp_path)
    assert ds.split("train") == ["s0000", "s0003"] and ds.split("val") == ["s0001"] and ds.split("test") == ["s0002"]
    assert ds.attributes_of("s0001")["gender"] == "f" and ds.attributes_of("s0002")["age"] == 40
    assert "meta.csv: a row for every case" in notes.text


def test_lits_volumes_pair_with_segmentations_side_by_side_and_in_batch_folders(tmp_path):
    for i in range(2):
        volume(tmp_path / f"volume-{i}.nii", i)
        volume(tmp_path / f"segmentation-{i}.nii", values=(1, 2))
    for i in range(2, 5):
        volume(tmp_path / "Training Batch 2" / f"volume-{i}.nii", i)
        volume(tmp_path / "Training Batch 2" / f"segmentation-{i}.nii", values=(1,))
    ds = open_dataset(tmp_path)
    assert list(ds.entries) == ["volume-0", "volume-1", "Training Batch 2/volume-2", "Training Batch 2/volume-3",
                                "Training Batch 2/volume-4"]
    assert ds.entries["volume-1"].label.name == "segmentation-1.nii"
    assert ds.subject_of("Training Batch 2/volume-3") == "Training Batch 2/volume-3"  # a batch is no patient
    assert split_sizes(tmp_path)["all"] == (5, 5)


def test_mmwhs_image_and_label_keep_their_modality_word(tmp_path):
    """MM-WHS names a pair ``ct_train_1001_image`` + ``ct_train_1001_label``: the label keeps the image's
    modality word, and its 16-bit values are the classes."""
    for i in (1001, 1002, 1003):
        volume(tmp_path / f"ct_train_{i}_image.nii.gz", i)
        label = np.zeros(SHAPE, np.uint16)
        label[2:5, 2:8, :], label[6:9, 2:8, :] = 205, 500
        nib.save(nib.Nifti1Image(label, np.eye(4)), str(tmp_path / f"ct_train_{i}_label.nii.gz"))
    ds = open_dataset(tmp_path)
    assert ds.entries["ct_train_1002_image"].label.name == "ct_train_1002_label.nii.gz"
    assert split_sizes(tmp_path)["all"] == (3, 3)
    assert ds.class_map.labels == [205, 500]


def test_left_atrium_2018_reads_laendo_as_the_label_of_lgemri(tmp_path):
    """The 2018 Atrial Segmentation Challenge: ``<case>/lgemri.nrrd`` + ``laendo.nrrd`` (0/255), one case
    per folder, not two unlabelled images."""
    import SimpleITK as sitk

    for i, case in enumerate(("06SR5RBREL16DQ6M8LWS", "0RZDK210BSMWAA6467LU")):
        (tmp_path / case).mkdir()
        sitk.WriteImage(sitk.GetImageFromArray(np.full((3, 10, 12), i, np.uint8)), str(tmp_path / case / "lgemri.nrrd"))
        mask = np.zeros((3, 10, 12), np.uint8)
        mask[:, 2:6, 3:9] = 255
        sitk.WriteImage(sitk.GetImageFromArray(mask), str(tmp_path / case / "laendo.nrrd"))
    ds = open_dataset(tmp_path)
    assert sorted(ds.entries) == ["06SR5RBREL16DQ6M8LWS", "0RZDK210BSMWAA6467LU"]
    assert ds.entries["0RZDK210BSMWAA6467LU"].image.name == "lgemri.nrrd"
    assert ds.entries["0RZDK210BSMWAA6467LU"].label.name == "laendo.nrrd"
    assert np.count_nonzero(ds.load("06SR5RBREL16DQ6M8LWS").label) == 3 * 4 * 6


def test_btcv_img_and_label_folders_pair_by_case_number(tmp_path):
    """BTCV (Synapse) as downloaded: ``RawData/Training/img/img0001.nii.gz`` + ``label/label0001.nii.gz``, each
    image a case of its own (not one case of many modalities), and ``Testing/img/`` unlabelled cases."""
    for i in (1, 2, 3, 4, 5):
        volume(tmp_path / "Training" / "img" / f"img{i:04d}.nii.gz", i)
        volume(tmp_path / "Training" / "label" / f"label{i:04d}.nii.gz", values=(1, 6))
    for i in (61, 62):
        volume(tmp_path / "Testing" / "img" / f"img{i:04d}.nii.gz", i)
    ds = open_dataset(tmp_path / "Training")
    assert list(ds.entries) == [f"img/img{i:04d}" for i in (1, 2, 3, 4, 5)]
    assert ds.entries["img/img0003"].label.name == "label0003.nii.gz"
    assert ds.subject_of("img/img0003") == "img/img0003"
    assert split_sizes(tmp_path / "Training") == {"train": (4, 4), "val": (1, 1), "all": (5, 5)}
    assert ds.class_map.labels == [1, 6]
    testing = open_dataset(tmp_path / "Testing")
    assert list(testing.entries) == ["img/img0061", "img/img0062"] and not testing.has_label("img/img0061")
    whole = open_dataset(tmp_path)  # RawData/ itself: Training/ paired, Testing/ the test split
    assert list(whole.entries)[0] == "Training/img/img0001" and whole.split("test") == ["Testing/img/img0061",
                                                                                       "Testing/img/img0062"]
    assert whole.entries["Training/img/img0005"].label.name == "label0005.nii.gz"
    assert split_sizes(tmp_path)["train"] == (4, 4)
    alone = dataset_info(tmp_path / "Training" / "img")  # the image folder given alone: its cases, to predict
    assert alone["splits"]["all"]["cases"] == 5 and alone["splits"]["all"]["labelled"] == 0


def test_camus_views_take_the_attributes_of_their_info_file(tmp_path, notes):
    """CAMUS: ``patient0001/patient0001_2CH_ED.nii.gz`` + ``_gt``, and ``Info_2CH.cfg`` / ``Info_4CH.cfg`` per
    view (Sex, Age, ImageQuality): each image takes its view's, with its view and phase; a patient's images
    stay together in the splits."""
    for p in range(1, 6):
        folder = tmp_path / f"patient{p:04d}"
        for view in ("2CH", "4CH"):
            for phase in ("ED", "ES"):
                volume(folder / f"patient{p:04d}_{view}_{phase}.nii.gz", p)
                volume(folder / f"patient{p:04d}_{view}_{phase}_gt.nii.gz", values=(1, 2, 3))
            quality = "Poor" if view == "4CH" else "Good"
            (folder / f"Info_{view}.cfg").write_text(f"ED: 1\nES: 14\nNbFrame: 15\nSex: {'FM'[p % 2]}\nAge: {50 + 5 * p}\n"
                                                    f"ImageQuality: {quality}\nEF: 42.5\nFrameRate: 20\n")
    ds = open_dataset(tmp_path)
    attributes = ds.attributes_of("patient0003/patient0003_4CH_ES")
    assert attributes["Sex"] == "M" and attributes["Age"] == 65 and attributes["ImageQuality"] == "Poor"
    assert attributes["view"] == "4CH" and attributes["phase"] == "ES" and "NbFrame" not in attributes
    assert ds.attributes_of("patient0003/patient0003_2CH_ED")["ImageQuality"] == "Good"
    assert ds.load("patient0002/patient0002_2CH_ED").attributes["Sex"] == "F"
    assert ds.split("val") == [f"patient0005/patient0005_{v}_{p}" for v in ("2CH", "4CH") for p in ("ED", "ES")]


def test_a_cine_label_outside_the_mnms_layout_is_refused_naming_its_drawn_frames(tmp_path):
    """A 4D label of class indices drawn on two time frames of its 4D cine, in a layout that says no frame
    (``images/`` + ``labels/``): refused naming the drawn frames and what to save, not as a label that is
    "neither class indices nor one-hot", nor read as its first frame. M&Ms' own layout reads them
    (test_mnms.py)."""
    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((*SHAPE, 6)).astype(np.float32), np.eye(4)),
             str(tmp_path / "images" / "heart.nii.gz"))
    label = np.zeros((*SHAPE, 6), np.uint8)
    for frame in (0, 3):
        label[1:3, 2:8, :, frame], label[4:6, 2:8, :, frame], label[7:9, 2:8, :, frame] = 1, 2, 3
    nib.save(nib.Nifti1Image(label, np.eye(4)), str(tmp_path / "labels" / "heart.nii.gz"))
    (tmp_path / "classes.json").write_text('{"1": "LV", "2": "Myo", "3": "RV"}')
    ds = open_dataset(tmp_path)
    with pytest.raises(DataError, match=r"6 time frames of class indices, classes in frame\(s\) 0, 3 only"):
        ds.load("heart")


def test_acdc_patient_folders_pair_frames_with_gt_and_keep_the_patient(tmp_path):
    for p in (1, 2):
        folder = tmp_path / f"patient{p:03d}"
        volume(folder / f"patient{p:03d}_4d.nii.gz")
        for frame in ("01", "12"):
            volume(folder / f"patient{p:03d}_frame{frame}.nii.gz")
            volume(folder / f"patient{p:03d}_frame{frame}_gt.nii.gz", values=(1, 2, 3))
    ds = open_dataset(tmp_path)
    assert ds.subject_of("patient002_frame12") == "patient002"
    assert ds.split("val") == ["patient002_frame01", "patient002_frame12"]
    assert len(ds.split("all")) == 4 and "test" not in ds.split_names()  # the 4D cine is no case


def test_an_nnunet_image_folder_given_as_data_still_names_its_dataset(tmp_path):
    from fewsam.data.phantom import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "data", n_train=1, n_val=1, slices=2)
    with pytest.raises(DataError, match=f"inside the dataset {data.resolve()} .*--data {data.resolve()}"):
        open_dataset(data / "imagesTr")


def test_the_folder_an_archive_unpacked_into_names_the_dataset_below_it(tmp_path):
    for i in range(2):
        case = tmp_path / "BraTS2021_Training_Data" / f"BraTS2021_{i:05d}"
        volume(case / f"BraTS2021_{i:05d}_flair.nii.gz")
        volume(case / f"BraTS2021_{i:05d}_seg.nii.gz", values=(1,))
    (tmp_path / "notes").mkdir()
    with pytest.raises(DataError, match=f"its sub-folder {tmp_path / 'BraTS2021_Training_Data'} holds a dataset; give "
                                        f"that folder: --data {tmp_path / 'BraTS2021_Training_Data'}$"):
        open_dataset(tmp_path)


def test_nnunet_folders_without_dataset_json_are_no_case_folders(tmp_path):
    volume(tmp_path / "imagesTr" / "case_001_0000.nii.gz")
    volume(tmp_path / "labelsTr" / "case_001.nii.gz", values=(1,))
    with pytest.raises(DataError, match="holds nnU-Net's imagesTr/ but no dataset.json; write one"):
        open_dataset(tmp_path)


def test_amos_validation_list_is_the_val_split(tmp_path):
    training = []
    for i in (1, 2, 3):
        volume(tmp_path / "imagesTr" / f"amos_{i:04d}.nii.gz", i)
        volume(tmp_path / "labelsTr" / f"amos_{i:04d}.nii.gz", values=(1, 2))
        training.append({"image": f"./imagesTr/amos_{i:04d}.nii.gz", "label": f"./labelsTr/amos_{i:04d}.nii.gz"})
    volume(tmp_path / "imagesVa" / "amos_0008.nii.gz")
    volume(tmp_path / "labelsVa" / "amos_0008.nii.gz", values=(1,))
    volume(tmp_path / "imagesTs" / "amos_0009.nii.gz")
    (tmp_path / "dataset.json").write_text(json.dumps({
        "labels": {"0": "background", "1": "spleen", "2": "right kidney"}, "numTraining": 3, "training": training,
        "validation": [{"image": "./imagesVa/amos_0008.nii.gz", "label": "./labelsVa/amos_0008.nii.gz"}],
        "test": ["./imagesTs/amos_0009.nii.gz"]}))
    ds = open_dataset(tmp_path)
    assert ds.split("train") == ["amos_0001", "amos_0002", "amos_0003"]
    assert ds.split("val") == ["amos_0008"] and ds.split("test") == ["amos_0009"]
    assert ds.load("amos_0008").label.max() == 1


def test_chaos_slice_masks_beside_dicom_series_are_said_not_read(tmp_path, notes):
    rng = np.random.default_rng(0)
    for p in ("1", "2"):
        series = (rng.random((2, 8, 8)) * 100).astype(np.int16)
        write_series(tmp_path / "CT" / p / "DICOM_anon", series, uid=f"1.2.3.{p}")
        for z in range(2):
            picture(tmp_path / "CT" / p / "Ground" / f"liver_GT_{z:03d}.png", mask=True)
    ds = open_dataset(tmp_path)
    assert list(ds.entries) == ["CT/1/DICOM_anon", "CT/2/DICOM_anon"] and not ds.has_any_label()
    assert "4 2D image file(s) in 2 folder(s) beside the DICOM series (CT/1/Ground, CT/2/Ground) are not read" \
        in notes.text
    assert "labels/<case>.nii.gz" in notes.text


# ---------------------------------------------------------------- 2D image and mask folders


def test_kvasir_images_and_jpeg_masks_of_the_same_names(tmp_path):
    for name in ("cju0qkwl35piu0993l0dewei2", "cju0qoxqj9q6s0835b43399p4"):
        picture(tmp_path / "images" / f"{name}.jpg")
        picture(tmp_path / "masks" / f"{name}.jpg", mask=True)
    ds = open_dataset(tmp_path)
    assert len(ds.entries) == 2 and all(ds.has_label(c) for c in ds.entries)
    assert ds.class_map.names == {1: "foreground"}


def test_isic_input_and_groundtruth_folders_pair_by_their_names(tmp_path):
    for i in range(3):
        picture(tmp_path / "ISIC2018_Task1-2_Training_Input" / f"ISIC_{i:07d}.jpg")
        picture(tmp_path / "ISIC2018_Task1_Training_GroundTruth" / f"ISIC_{i:07d}_segmentation.png", mask=True)
    ds = open_dataset(tmp_path)
    assert list(ds.entries) == [f"ISIC2018_Task1-2_Training_Input/ISIC_{i:07d}" for i in range(3)]
    assert ds.entries["ISIC2018_Task1-2_Training_Input/ISIC_0000001"].label.name == "ISIC_0000001_segmentation.png"
    assert split_sizes(tmp_path)["all"] == (3, 3)


def test_a_label_written_for_an_unlabelled_image_goes_where_the_scan_reads_it(tmp_path):
    """The studio's export names a new label by ``label_rel_path``: ISIC's ground-truth folder, not
    ``x_mask.png`` beside the image, which the scan would not pair with it there."""
    for i in range(2):
        picture(tmp_path / "ISIC2018_Task1-2_Training_Input" / f"ISIC_{i:07d}.jpg")
    picture(tmp_path / "ISIC2018_Task1_Training_GroundTruth" / "ISIC_0000000_segmentation.png", mask=True)
    ds = open_dataset(tmp_path)
    rel = ds.label_rel_path(ds.entries["ISIC2018_Task1-2_Training_Input/ISIC_0000001"])
    assert rel == "ISIC2018_Task1_Training_GroundTruth/ISIC_0000001.png"
    picture(tmp_path / rel, mask=True)
    assert open_dataset(tmp_path).has_label("ISIC2018_Task1-2_Training_Input/ISIC_0000001")


def test_ham10000_metadata_gives_attributes_and_keeps_a_lesion_in_one_split(tmp_path, notes):
    """HAM10000: ``HAM10000_images_part_{1,2}/ISIC_x.jpg``, ``HAM10000_segmentations_lesion_tschandl/ISIC_x_segmentation.png``
    and ``HAM10000_metadata.csv`` (lesion_id, image_id, dx, age, sex...): its columns are the images' attributes,
    and a lesion photographed several times has all its images in one split."""
    rows = ["lesion_id,image_id,dx,dx_type,age,sex,localization"]
    for k in range(10):
        image, lesion = f"ISIC_{24306 + k:07d}", f"HAM_{k // 2:07d}"  # two images of each lesion
        picture(tmp_path / f"HAM10000_images_part_{1 + k % 2}" / f"{image}.jpg")
        picture(tmp_path / "HAM10000_segmentations_lesion_tschandl" / f"{image}_segmentation.png", mask=True)
        rows.append(f"{lesion},{image},nv,histo,{30 + 5 * k}.0,{'male' if k % 3 else 'female'},back")
    (tmp_path / "HAM10000_metadata.csv").write_text("\n".join(rows) + "\n")
    ds = open_dataset(tmp_path)
    assert split_sizes(tmp_path)["all"] == (10, 10)
    train, val = ds.split("train"), ds.split("val")
    assert val and {ds.subject_of(c) for c in train}.isdisjoint(ds.subject_of(c) for c in val)
    assert len(val) == 2 and ds.subject_of(val[0]) == ds.subject_of(val[1])
    attributes = ds.attributes_of("HAM10000_images_part_2/ISIC_0024307")
    assert attributes["sex"] == "male" and attributes["age"] == 35.0 and attributes["lesion_id"] == "HAM_0000000"
    assert "HAM10000_metadata.csv: a row for every image" in notes.text


def test_isic_training_validation_and_test_folders_are_its_splits(tmp_path):
    for split, count in (("Training", 3), ("Validation", 2), ("Test", 2)):
        for i in range(count):
            name = f"ISIC_{split[0]}{i:06d}"
            picture(tmp_path / f"ISIC2018_Task1-2_{split}_Input" / f"{name}.jpg")
            picture(tmp_path / f"ISIC2018_Task1_{split}_GroundTruth" / f"{name}_segmentation.png", mask=True)
    ds = open_dataset(tmp_path)
    assert {name: len(ds.split(name)) for name in ("train", "val", "test")} == {"train": 3, "val": 2, "test": 2}
    assert ds.split("val") == ["ISIC2018_Task1-2_Validation_Input/ISIC_V000000",
                               "ISIC2018_Task1-2_Validation_Input/ISIC_V000001"]


def test_cvc_original_and_ground_truth_folders(tmp_path):
    for i in (1, 2, 10):
        picture(tmp_path / "Original" / f"{i}.tif")
        picture(tmp_path / "Ground Truth" / f"{i}.tif", mask=True)
    ds = open_dataset(tmp_path)
    assert list(ds.entries) == ["Original/1", "Original/2", "Original/10"]
    assert ds.load("Original/10").label.max() == 1


def test_a_folder_of_one_kind_is_no_mask_folder_without_images_beside_it(tmp_path):
    """A folder named with a ground-truth word (Dataset_BUSI_with_GT) holding the images themselves."""
    picture(tmp_path / "Dataset_BUSI_with_GT" / "benign" / "benign (1).png")
    picture(tmp_path / "Dataset_BUSI_with_GT" / "benign" / "benign (1)_mask.png", mask=True)
    ds = open_dataset(tmp_path)
    assert list(ds.entries) == ["Dataset_BUSI_with_GT/benign/benign (1)"] and ds.has_any_label()


def test_glas_annotations_beside_their_images(tmp_path, notes):
    """GlaS numbers each gland of a mask (1, 2, ...): said, with the classes.json that reads them as one class."""
    for i, glands in ((1, 2), (2, 3), (3, 5)):
        picture(tmp_path / f"train_{i}.bmp")
        mask = np.zeros((16, 18), np.uint8)
        for g in range(glands):
            mask[1 + 3 * g:3 + 3 * g, 2:6] = g + 1
        Image.fromarray(mask).save(tmp_path / f"train_{i}_anno.bmp")
    for i in (1, 2):
        picture(tmp_path / f"testA_{i}.bmp")
        Image.fromarray(np.zeros((16, 18), np.uint8)).save(tmp_path / f"testA_{i}_anno.bmp")
    ds = open_dataset(tmp_path)
    assert list(ds.entries) == ["testA_1", "testA_2", "train_1", "train_2", "train_3"]
    assert all(map(ds.has_label, ds.entries))
    assert ds.split("test") == ["testA_1", "testA_2"] and ds.split("val") == ["train_3"]  # GlaS' own test set
    assert "they look like numbered objects (instances, as GlaS" in notes.text
    (tmp_path / "classes.json").write_text(json.dumps({"1": {"name": "gland", "min": 1}}))
    ds = open_dataset(tmp_path)
    assert ds.class_map.names == {1: "gland"} and set(np.unique(ds.load("train_3").label)) == {0, 1}


def test_many_numbered_objects_are_refused_with_the_classes_json_that_reads_them(tmp_path):
    picture(tmp_path / "a.bmp")
    mask = np.zeros((16, 18), np.uint8)
    mask.flat[::5] = np.arange(1, 59)
    Image.fromarray(mask).save(tmp_path / "a_anno.bmp")
    advice = r'numbered objects .* classes.json \{"1": \{"name": "foreground", "min": 1\}\}'
    with pytest.raises(DataError, match=advice):
        open_dataset(tmp_path).load("a")


def test_drive_reads_the_manual_annotations_not_the_field_of_view_masks(tmp_path, notes):
    for i in (21, 22, 23):
        picture(tmp_path / "training" / "images" / f"{i}_training.tif")
        picture(tmp_path / "training" / "1st_manual" / f"{i}_manual1.gif", mask=True, value=255)
        fov = tmp_path / "training" / "mask" / f"{i}_training_mask.gif"
        fov.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 18), 255, np.uint8)).save(fov)  # the whole field of view
    for i in (1, 2):
        picture(tmp_path / "test" / "images" / f"{i:02d}_test.tif")
        picture(tmp_path / "test" / "mask" / f"{i:02d}_test_mask.gif", mask=True)
    ds = open_dataset(tmp_path)
    assert ds.entries["training/images/22_training"].label.name == "22_manual1.gif"
    assert not ds.has_label("test/images/01_test")  # its mask/ is the field of view, not a label
    label = ds.load("training/images/21_training").label
    assert label.mean() < 0.5  # the drawn vessels' block, not an all-foreground field of view
    assert "training/mask: beside folders of drawn annotations (1st_manual)" in notes.text
    assert "have no image of their name" not in notes.text
    assert split_sizes(tmp_path)["test"] == (2, 0)
    assert ds.split("train") == ["training/images/21_training", "training/images/22_training"]  # val: one of training
    assert ds.split("val") == ["training/images/23_training"]


def test_masks_stay_labels_beside_a_folder_named_as_annotations_that_pairs_nothing(tmp_path):
    """An annotations/ folder of other pictures (previews) beside images/ and masks/: masks/ holds the labels."""
    for name in ("a", "b"):
        picture(tmp_path / "images" / f"{name}.png")
        picture(tmp_path / "masks" / f"{name}.png", mask=True)
    picture(tmp_path / "annotations" / "overview.png")
    ds = open_dataset(tmp_path)
    assert list(ds.entries) == ["images/a", "images/b"] and ds.entries["images/b"].label.parent.name == "masks"


def test_drive_with_labelled_test_images_keeps_them_apart_and_its_second_annotator_is_said(tmp_path, notes):
    """DRIVE's release labels its test images too (1st_manual, 2nd_manual): they stay the test split."""
    for i in (21, 22, 23):
        picture(tmp_path / "training" / "images" / f"{i}_training.tif")
        picture(tmp_path / "training" / "1st_manual" / f"{i}_manual1.gif", mask=True)
    for i in (1, 2):
        picture(tmp_path / "test" / "images" / f"{i:02d}_test.tif")
        for annotator in ("1st_manual", "2nd_manual"):
            picture(tmp_path / "test" / annotator / f"{i:02d}_manual{annotator[0]}.gif", mask=True)
    ds = open_dataset(tmp_path)
    assert ds.entries["test/images/02_test"].label.parent.name == "1st_manual"
    assert "test/2nd_manual: its masks are not read; the images' labels are read from 1st_manual" in notes.text
    assert ds.split("test") == ["test/images/01_test", "test/images/02_test"]
    assert ds.split("val") == ["training/images/23_training"]


def test_montgomery_left_and_right_lung_masks_are_merged(tmp_path, notes):
    for i in (1, 2):
        picture(tmp_path / "CXR_png" / f"MCUCXR_{i:04d}_0.png", colour=False)
        for side, columns in (("leftMask", slice(1, 6)), ("rightMask", slice(10, 16))):
            mask = np.zeros((16, 18), np.uint8)
            mask[2:14, columns] = 255
            (tmp_path / "ManualMask" / side).mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(tmp_path / "ManualMask" / side / f"MCUCXR_{i:04d}_0.png")
    ds = open_dataset(tmp_path)
    assert list(ds.entries) == ["CXR_png/MCUCXR_0001_0", "CXR_png/MCUCXR_0002_0"]
    label = ds.load("CXR_png/MCUCXR_0002_0").label[0]
    assert label[5, 3] == 1 and label[5, 12] == 1 and label[5, 8] == 0
    assert "(leftMask, rightMask); they are merged into one mask" in notes.text


def test_masks_of_images_in_sub_folders_are_not_merged_into_a_top_image_of_their_name(tmp_path):
    """images/x.png without a mask beside images/a/x.png and images/b/x.png with theirs: no structure folders."""
    for folder in ("", "a", "b"):
        picture(tmp_path / "images" / folder / "x.png")
        if folder:
            picture(tmp_path / "masks" / folder / "x.png", mask=True)
    ds = open_dataset(tmp_path)
    assert not ds.has_label("images/x") and ds.has_label("images/a/x") and ds.has_label("images/b/x")


# ---------------------------------------------------------------- predictions that evaluate finds


@pytest.mark.parametrize("layout", ["totalsegmentator", "drive"])
def test_predictions_written_for_the_new_layouts_are_scored_by_evaluate(tmp_path, layout):
    """What predict writes for a case (``write_prediction``) is found and scored by evaluate: the labels
    themselves as predictions score Dice 1."""
    from fewsam.api import evaluate
    from fewsam.data.writers import write_prediction

    data = tmp_path / "data"
    if layout == "totalsegmentator":
        for i in range(2):
            volume(data / f"s{i:04d}" / "ct.nii.gz", i)
            mask = np.zeros(SHAPE, np.uint8)
            mask[2:6, 2:8, :] = 1
            (data / f"s{i:04d}" / "segmentations").mkdir()
            nib.save(nib.Nifti1Image(mask, np.eye(4)), str(data / f"s{i:04d}" / "segmentations" / "liver.nii.gz"))
    else:
        for i in (21, 22):
            picture(data / "training" / "images" / f"{i}_training.tif")
            picture(data / "training" / "1st_manual" / f"{i}_manual1.gif", mask=True)
            picture(data / "training" / "mask" / f"{i}_training_mask.gif")
    ds = open_dataset(data)
    written = [write_prediction(case, case.label, tmp_path / "pred") for case in map(ds.load, ds.split("all"))]
    expected = {"totalsegmentator": ["s0000.nii.gz", "s0001.nii.gz"],
                "drive": ["training/images/21_training.png", "training/images/22_training.png"]}[layout]
    assert [p.relative_to(tmp_path / "pred").as_posix() for p in written] == expected
    scores = evaluate(tmp_path / "pred", data, split="all", show_progress=False)
    assert len(scores["cases"]) == 2 and scores["mean"]["dice"] == pytest.approx(1.0)


# ---------------------------------------------------------------- 3D h5 volumes with list files (LA, Pancreas-CT)


def h5_volume(path: Path, seed: int, shape: tuple[int, int, int] = (12, 10, 5), depth_first: bool = False
              ) -> np.ndarray:
    """An SSL4MIS 3D h5 case: ``image`` (x, y, z) float, ``label`` (x, y, z) with a block of class 1; with
    ``depth_first`` both stored (z, x, y). Returns the image (x, y, z)."""
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).random(shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[2:6, 3:8, 1:4] = 1
    with h5py.File(path, "w") as f:
        f["image"], f["label"] = (np.moveaxis(a, 2, 0) if depth_first else a for a in (image, label))
    return image


def h5_volume_set(root: Path, ids: list[str], depth_first: bool = False, shape: tuple[int, int, int] = (12, 10, 5)
                  ) -> dict[str, np.ndarray]:
    """An LA-like set: ``<case>/mri_norm2.h5`` per id, all but the last in train.list, the last in test.list.
    Returns each case's image (x, y, z)."""
    stored = {case: h5_volume(root / "2018LA_Seg_Training Set" / case / "mri_norm2.h5", i, shape, depth_first)
              for i, case in enumerate(ids)}
    (root / "train.list").write_text("\n".join(ids[:-1]) + "\n")
    (root / "test.list").write_text(ids[-1] + "\n")
    return stored


def test_left_atrium_h5_folders_are_cut_along_their_depth_and_split_by_their_lists(tmp_path):
    """SSL4MIS' LA: ``2018LA_Seg_Training Set/<case>/mri_norm2.h5``, image and label (x, y, z), train.list and
    test.list in root: a case per folder, slices along z, test.list the test split, val drawn from train.list."""
    ids = ["06SR5RBREL16DQ6M8LWS", "0RZDK210BSMWAA6467LU", "1D7CUD1955YZPGK8XHJX", "1GU15S0GJ6PFNARO469W"]
    stored = h5_volume_set(tmp_path, ids)
    ds = open_dataset(tmp_path)
    assert ds.layout == "h5-volumes" and sorted(ds.entries) == sorted(ids)
    assert ds.split("test") == [ids[3]] and not set(ds.split("train")) & set(ds.split("val"))
    assert set(ds.split("train")) | set(ds.split("val")) == set(ids[:3])
    case = ds.load(ids[1])
    assert case.image.shape == (5, 12, 10) and ds.num_slices(ids[1]) == 5
    np.testing.assert_allclose(case.image[2], stored[ids[1]][:, :, 2])
    assert int(case.label[1].sum()) == 4 * 5 and int(case.label[0].sum()) == 0


def test_pancreas_h5_files_side_by_side_are_named_as_their_lists_name_them_and_predictions_read_back(tmp_path):
    """UA-MT's Pancreas-CT: ``Pancreas_h5/image0001_norm.h5`` listed as ``image0001``. A prediction is
    ``<case>.h5``, key ``pred`` in the image's (x, y, z) order, and evaluate scores it."""
    import h5py

    from fewsam.api import evaluate
    from fewsam.data.writers import write_prediction

    for i in range(1, 5):
        h5_volume(tmp_path / "data" / "Pancreas_h5" / f"image{i:04d}_norm.h5", i)
    (tmp_path / "data" / "train.list").write_text("image0001\nimage0002\nimage0003\n")
    (tmp_path / "data" / "test.list").write_text("image0004\n")
    ds = open_dataset(tmp_path / "data")
    assert list(ds.entries) == ["image0001", "image0002", "image0003", "image0004"]
    case = ds.load("image0004")
    written = write_prediction(case, case.label, tmp_path / "pred")
    assert written == tmp_path / "pred" / "image0004.h5"
    with h5py.File(written, "r") as f:
        assert f["pred"].shape == (12, 10, 5) and int(f["pred"][2:6, 3:8, 1:4].min()) == 1
    scores = evaluate(tmp_path / "pred", tmp_path / "data", split="test", show_progress=False)
    assert scores["mean"]["dice"] == pytest.approx(1.0)
    with pytest.raises(DataError, match=f"holds the cases of the dataset {tmp_path / 'data'}, .*--data"):
        open_dataset(tmp_path / "data" / "Pancreas_h5")  # its list files are in the folder above


@pytest.mark.parametrize("depth_first", [False, True], ids=["depth-last", "depth-first"])
def test_h5_volumes_are_cut_along_their_depth_first_or_last_and_a_prediction_equal_to_the_label_scores_1(
        tmp_path, notes, depth_first):
    """LA and Pancreas-CT store their depth last (x, y, z); SSL4MIS' ACDC and BraTS volumes and many users' own
    h5 files store it first. Either is cut along its depth, the axis standing out from two in-plane axes of about
    one length, into 5 slices of 12 x 10 (cut along the last axis, depth-first volumes would give 10 slices of
    5 x 12); the axis is said where it is not the last. A prediction is written in the image's own axis order,
    and one equal to the label scores Dice 1."""
    import h5py

    from fewsam.api import evaluate
    from fewsam.data.writers import write_prediction

    ids = ["case1", "case2", "case3", "case4"]
    stored = h5_volume_set(tmp_path / "data", ids, depth_first)
    ds = open_dataset(tmp_path / "data")
    case = ds.load("case4")
    assert ds.num_slices("case4") == 5 and case.image.shape == (5, 12, 10) and case.label.shape == (5, 12, 10)
    np.testing.assert_allclose(case.image[2], stored["case4"][:, :, 2])
    assert int(case.label[1].sum()) == 4 * 5 and int(case.label[0].sum()) == 0
    said = "the h5 volumes are cut into slices along their first axis" in notes.text
    assert said == depth_first and ("along their last axis" in notes.text) is False
    written = write_prediction(case, case.label, tmp_path / "pred")
    with h5py.File(written, "r") as f, h5py.File(ds.entries["case4"].label, "r") as source:
        assert np.array_equal(f["pred"][()], source["label"][()])
    scores = evaluate(tmp_path / "pred", tmp_path / "data", split="test", show_progress=False)
    assert scores["mean"]["dice"] == pytest.approx(1.0)


def test_a_volume_stored_otherwise_than_most_of_its_h5_set_is_refused_not_cut_across_its_slices(tmp_path):
    """Three LA-like volumes store their depth last, one stores it first: cut along the others' last axis, its
    slices would be cuts across its real ones. Reading it is refused in one line naming the file and the axes;
    the others read as before. A dataset.json naming the first axis as the depth refuses the others instead."""
    import h5py
    from conftest import assert_one_line_error, run_fewsam

    ids = ["case1", "case2", "case3", "case4"]
    h5_volume_set(tmp_path / "data", ids)
    odd = tmp_path / "data" / "2018LA_Seg_Training Set" / "case4" / "mri_norm2.h5"
    h5_volume(odd, 9, depth_first=True)
    ds = open_dataset(tmp_path / "data")
    assert ds.load("case1").image.shape == (5, 12, 10)
    for read in (ds.load, ds.num_slices):
        with pytest.raises(DataError, match=f"{odd}: .*shape \\(5, 12, 10\\) stands out along its first axis.*"
                                            "along their last \\(as most of its volumes show\\)"):
            read("case4")
    (tmp_path / "pred").mkdir()
    with h5py.File(odd, "r") as source, h5py.File(tmp_path / "pred" / "case4.h5", "w") as pred:
        pred["pred"] = source["label"][()]
    assert_one_line_error(run_fewsam("evaluate", "--pred", str(tmp_path / "pred"), "--data", str(tmp_path / "data"),
                                     "--split", "test", cwd=tmp_path), f"{odd}: its volume of shape (5, 12, 10)")
    (tmp_path / "data" / "dataset.json").write_text(json.dumps({"depth_axis": "first"}))
    declared = open_dataset(tmp_path / "data")
    assert declared.load("case4").image.shape == (5, 12, 10)
    with pytest.raises(DataError, match="along their first \\(as .*dataset.json declares\\)"):
        declared.load("case1")


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_the_depth_axis_a_dataset_json_names_cuts_volumes_whose_shapes_show_none(tmp_path, axis):
    """Cubes show no depth, so the last axis would be taken; the axis ``"depth_axis"`` in root's dataset.json
    names is the one they are cut along, and an axis it cannot name is refused naming the key."""
    ids = ["case1", "case2", "case3"]
    stored = h5_volume_set(tmp_path, ids, shape=(6, 6, 6))
    (tmp_path / "dataset.json").write_text(json.dumps({"depth_axis": ["first", "middle", "last"][axis]}))
    case = open_dataset(tmp_path).load("case3")
    np.testing.assert_allclose(case.image[2], np.take(stored["case3"], 2, axis=axis))
    (tmp_path / "dataset.json").write_text(json.dumps({"depth_axis": "z"}))
    with pytest.raises(DataError, match="dataset.json: 'depth_axis' is 'z'; name the axis"):
        open_dataset(tmp_path)


def test_ssl4mis_3d_test_predictions_of_left_atrium_volumes_are_read_in_the_h5_files_order(tmp_path):
    """SSL4MIS's 3D ``test_all_case`` saves each LA prediction with nibabel in the h5 file's (x, y, z) order,
    ``Nifti1Image(prediction.astype(np.float32), np.eye(4))``: read in SimpleITK's reversed order, it would be
    refused for its shape. The label so saved scores Dice 1, a shifted one less."""
    import h5py

    from fewsam.api import evaluate

    ids = ["case1", "case2", "case3"]
    h5_volume_set(tmp_path / "data", ids)
    with h5py.File(tmp_path / "data" / "2018LA_Seg_Training Set" / "case3" / "mri_norm2.h5", "r") as source:
        label = source["label"][()]
    for folder, prediction in (("exact", label), ("shifted", np.roll(label, 2, axis=0))):
        (tmp_path / folder).mkdir()
        nib.save(nib.Nifti1Image(prediction.astype(np.float32), np.eye(4)), tmp_path / folder / "case3_pred.nii.gz")
    exact = evaluate(tmp_path / "exact", tmp_path / "data", split="test", show_progress=False)
    assert exact["mean"]["dice"] == pytest.approx(1.0)
    assert evaluate(tmp_path / "shifted", tmp_path / "data", split="test", show_progress=False)["mean"]["dice"] < 0.9


def test_the_depth_is_the_axis_standing_out_and_one_axis_holds_for_every_volume_of_a_set():
    """112 x 112 x 80 (LA's crops) is cut along its last axis, 80 x 112 x 112 and ACDC's 10 x 256 x 216 along
    their first; a cube, or LA crops of unequal sides, show no axis and count for the last. The axis most volumes
    show holds for all, so one volume of unusual proportions is not cut across the others' slices."""
    from fewsam.data.readers.h5_volumes import depth_axis_of, odd_axis

    shapes = [(112, 112, 80), (80, 112, 112), (10, 256, 216), (64, 64, 64), (150, 120, 88)]
    assert [odd_axis(shape) for shape in shapes] == [2, 0, 0, None, None]
    assert depth_axis_of([(100, 150, 160), (130, 140, 88), (150, 120, 88)])[0] == 2
    assert depth_axis_of([(10, 256, 216), (9, 232, 256), (64, 64, 64)])[0] == 0


def test_the_first_lines_of_an_la_train_list_are_its_labelled_cases_and_validation_comes_from_its_end(tmp_path):
    """UA-MT and SSL4MIS label the first 8 or 16 lines of LA's train.list of 80: with no val.list, validation is
    the last 16 lines (a fifth), so every budget up to 64 labels the papers' cases and none of them validates."""
    from fewsam.data.budget import select_labelled

    rng = np.random.default_rng(0)
    ids = ["".join(rng.choice(list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"), 20)) for _ in range(81)]
    h5_volume_set(tmp_path, ids, shape=(4, 4, 2))
    ds = open_dataset(tmp_path)
    listed, val = ids[:80], ds.split("val")
    assert val == listed[64:] and ds.split("train") == listed[:64]
    for n in (8, 16):
        labelled = list(dict.fromkeys(ref.case_id for ref in select_labelled(ds, n_cases=n)))
        assert labelled == listed[:n] and not set(labelled) & set(val)
