"""`activessf crops`: labelled cell crops from VOC, COCO and CSV annotations, with error rows for what does not fit."""

import csv
import json

import cv2
import numpy as np
import pytest

from activessf.data.crops import CropOptions, Refused, crop_box, run_crops
from activessf.data.labelled import cell_id, list_labelled
from activessf.data.split import ids_digest
from activessf.imageio import read_rgb, write_png

W, H = 80, 60  # every synthetic image; pixel (x, y) of image k is RGB (x, y, 40 k): a crop shows where it came from


def coord_image(k: int) -> np.ndarray:
    x, y = np.meshgrid(np.arange(W), np.arange(H))
    return np.stack([x, y, np.full_like(x, 40 * k)], -1).astype(np.uint8)


def write_images(root, n=3):
    for k in range(n):
        write_png(root / f"img{k}.png", coord_image(k))
    return root


def origin(crop: np.ndarray) -> tuple[int, int, int]:
    """(x, y, image k) of a crop's top-left pixel."""
    r, g, b = (int(v) for v in crop[0, 0])
    return r, g, b // 40


def voc(path, filename, objects):
    """A VOC XML file; ``objects`` are (name, xmin, ymin, xmax, ymax) in VOC's 1-based inclusive corners."""
    body = "".join(f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax>"
                   f"<ymax>{d}</ymax></bndbox></object>" for n, a, b, c, d in objects)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><filename>{filename}</filename>{body}</annotation>")


def table(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def reasons(out):
    return [(r["image"], r["index"], r["reason"]) for r in table(out / "errors.csv")]


# ------------------------------------------------------------------ geometry


def test_a_box_grows_by_its_margin_and_is_clipped_to_the_image():
    px, share, square = CropOptions(margin="5"), CropOptions(margin="10%"), CropOptions(square=True)
    assert crop_box((20, 10, 30, 20), W, H, CropOptions()) == ((20, 10, 50, 30), False)
    assert crop_box((20, 10, 30, 20), W, H, px) == ((15, 5, 55, 35), False)
    assert crop_box((20, 10, 30, 20), W, H, share) == ((17, 8, 53, 32), False)  # 3 px across, 2 px down
    assert crop_box((20, 10, 30, 20), W, H, square) == ((20, 5, 50, 35), False)  # the height grows to 30
    assert crop_box((2, 1, 30, 20), W, H, px) == ((0, 0, 37, 26), True)  # the margin clipped at the edge
    assert crop_box((60, 45, 30, 20), W, H, CropOptions()) == ((60, 45, 80, 60), True)  # half outside, clipped
    with pytest.raises(Refused, match="box outside the image"):
        crop_box((70, 10, 30, 20), W, H, CropOptions())  # a third inside
    with pytest.raises(Refused, match="empty box"):
        crop_box((10, 10, 0, 20), W, H, CropOptions())
    with pytest.raises(ValueError, match="--margin"):
        CropOptions(margin="ten")


# ------------------------------------------------------------------ formats


def test_voc_boxes_become_crops_the_other_stages_read(tmp_path):
    images = write_images(tmp_path / "JPEGImages")
    voc(tmp_path / "Annotations" / "img0.xml", "img0.png", [("WBC", 11, 21, 40, 40), ("RBC", 51, 1, 60, 10)])
    voc(tmp_path / "Annotations" / "img1.xml", "img1.png", [("WBC", 1, 1, 20, 30)])
    out = tmp_path / "out"
    result = run_crops(tmp_path / "Annotations", out)  # images found in the sibling JPEGImages/
    assert result["crops"] == 3 and result["classes"] == {"RBC": 1, "WBC": 2} and result["errors"] == {}
    assert result["arguments"]["images"] == str(images) and result["arguments"]["format"] == "voc"
    pairs = list_labelled(out)
    assert [(p.relative_to(out).as_posix(), label) for p, label in pairs] == [
        ("RBC/img0_01.png", "RBC"), ("WBC/img0_00.png", "WBC"), ("WBC/img1_00.png", "WBC")]
    wbc0 = read_rgb(out / "WBC" / "img0_00.png")
    assert wbc0.shape == (20, 30, 3) and origin(wbc0) == (10, 20, 0)  # VOC (11, 21)-(40, 40) inclusive, 1-based
    assert origin(read_rgb(out / "WBC" / "img1_00.png")) == (0, 0, 1)
    assert sorted(list_labelled(out / "crops.csv")) == sorted(pairs)  # the manifest is a labelled CSV too
    row = next(r for r in table(out / "crops.csv") if r["label"] == "RBC")
    assert row["image"].endswith("img0.png") and (row["x"], row["y"], row["w"], row["h"]) == ("50", "0", "10", "10")
    assert result["digest"] == ids_digest([cell_id(p) for p, _ in pairs])
    sheet = read_rgb(out / "contact_sheet_WBC.png")
    assert sheet.shape == (104, 204, 3) and (out / "contact_sheet.png").is_file()  # two 96 px thumbnails


def test_coco_annotations_with_their_bad_entries(tmp_path):
    write_images(tmp_path / "imgs" / "sub")
    coco = {"images": [{"id": 1, "file_name": "sub/img1.png"}, {"id": 2, "file_name": "img2.png"}],
            "categories": [{"id": 7, "name": "MK"}],
            "annotations": [{"image_id": 1, "category_id": 7, "bbox": [5.5, 10, 20, 15.2]},
                            {"image_id": 2, "category_id": 7, "bbox": [0, 0, 10, 10]},  # stem lookup finds nothing
                            {"image_id": 1, "category_id": 9, "bbox": [0, 0, 10, 10]},
                            {"image_id": 1, "category_id": 7, "bbox": [1, 2]},
                            {"image_id": 5, "category_id": 7, "bbox": [0, 0, 10, 10]}]}
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    out = tmp_path / "out"
    result = run_crops(tmp_path / "ann.json", out, images=tmp_path / "imgs")
    assert result["crops"] == 1 and result["annotations"] == 5
    crop = read_rgb(out / "MK" / "img1_00.png")
    assert crop.shape == (16, 21, 3) and origin(crop) == (5, 10, 1)  # fractional boxes cover every pixel they touch
    assert reasons(out) == [("img2.png", "0", "image not found"), ("sub/img1.png", "1", "unknown label"),
                            ("sub/img1.png", "2", "bad annotation"), ("5", "-1", "bad annotation")]


def test_csv_boxes_in_both_layouts_and_points_with_a_diameter(tmp_path):
    write_images(tmp_path)
    (tmp_path / "xywh.csv").write_text("image,x,y,w,h,label\nimg0,10,20,30,15,A\nimg1.png,0,0,8,8,B\n")
    (tmp_path / "corners.csv").write_text("image,xmin,ymin,xmax,ymax,cell_type\nimg2.png,10,20,40,35,A\n")
    (tmp_path / "points.csv").write_text("image,x,y,label,diameter\nimg0,40,30,P,\nimg1,40,30,P,10\n"
                                         "img2,forty,30,P,\n")
    a = run_crops(tmp_path / "xywh.csv", tmp_path / "a")
    assert a["classes"] == {"A": 1, "B": 1}
    assert origin(read_rgb(tmp_path / "a" / "A" / "img0_00.png")) == (10, 20, 0)
    b = run_crops(tmp_path / "corners.csv", tmp_path / "b", label_column="cell_type")
    crop = read_rgb(tmp_path / "b" / "A" / "img2_00.png")
    assert b["crops"] == 1 and crop.shape == (15, 30, 3) and origin(crop) == (10, 20, 2)  # max corners exclusive
    c = run_crops(tmp_path / "points.csv", tmp_path / "c", diameter=20)
    assert c["crops"] == 2 and c["errors"] == {"bad annotation": 1}
    assert read_rgb(tmp_path / "c" / "P" / "img0_00.png").shape == (20, 20, 3)
    assert origin(read_rgb(tmp_path / "c" / "P" / "img0_00.png")) == (30, 20, 0)
    assert read_rgb(tmp_path / "c" / "P" / "img1_00.png").shape == (10, 10, 3)  # the row's own diameter
    assert reasons(tmp_path / "c") == [("img2", "0", "bad annotation")]
    (tmp_path / "bare.csv").write_text("image,x,y,label\nimg0,40,30,P\n")
    with pytest.raises(ValueError, match="needs --diameter"):
        run_crops(tmp_path / "bare.csv", tmp_path / "d")
    with pytest.raises(ValueError, match="no label column 'label'"):
        run_crops(tmp_path / "corners.csv", tmp_path / "d")
    with pytest.raises(ValueError, match="image,x,y,w,h"):
        (tmp_path / "odd.csv").write_text("file,left,top\nimg0,1,2\n")
        run_crops(tmp_path / "odd.csv", tmp_path / "d")


# ------------------------------------------------------------------ labels and errors


def test_keep_label_map_and_resize(tmp_path):
    write_images(tmp_path)
    (tmp_path / "b.csv").write_text("image,x,y,w,h,label\nimg0,0,0,10,10,MK\nimg0,20,0,10,10,mk-large\n"
                                    "img1,0,0,10,10,RBC\nimg1,20,0,10,10,debris\nimg2,0,0,10,10,WBC\n")
    (tmp_path / "map.yaml").write_text("MK: megakaryocyte\nmk-large: megakaryocyte\ndebris: drop\nWBC:\n")
    out = tmp_path / "out"
    result = run_crops(tmp_path / "b.csv", out, label_map=[str(tmp_path / "map.yaml")], keep=["MK", "mk-large",
                       "debris", "WBC", "RBC"], size=16)
    assert result["classes"] == {"megakaryocyte": 2}
    assert result["skipped"] == {"dropped by the label map": 2} and result["errors"] == {"unknown label": 1}
    assert reasons(out) == [("img1", "0", "unknown label")]  # RBC: kept, but the map does not name it
    assert read_rgb(out / "megakaryocyte" / "img0_01.png").shape == (16, 16, 3)
    kept = run_crops(tmp_path / "b.csv", tmp_path / "kept", keep=["MK", "RBC"], label_map=["MK=mk", "RBC=rbc"])
    assert kept["classes"] == {"mk": 1, "rbc": 1} and kept["skipped"] == {"not kept": 3} and kept["errors"] == {}
    assert len(table(tmp_path / "kept" / "skipped.csv")) == 3


def test_bad_rows_become_error_rows_and_the_rest_completes(tmp_path):
    write_images(tmp_path / "images", n=2)
    (tmp_path / "images" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    voc(tmp_path / "ann" / "img0.xml", "img0.png",
        [("WBC", 1, 1, 10, 10), ("WBC", 70, 1, 100, 10), ("WBC", 5, 5, 4, 20), ("WBC", 61, 41, 85, 64)])
    voc(tmp_path / "ann" / "broken.xml", "broken.jpg", [("WBC", 1, 1, 10, 10)])
    voc(tmp_path / "ann" / "gone.xml", "gone.png", [("WBC", 1, 1, 10, 10)])
    (tmp_path / "ann" / "mangled.xml").write_text("<annotation><object>")
    voc(tmp_path / "ann" / "img1.xml", "img1.png", [("WBC", 1, 1, 10, 10), ("", 1, 1, 10, 10)])
    out = tmp_path / "out"
    result = run_crops(tmp_path / "ann", out, images=tmp_path / "images")
    assert result["crops"] == 3 and result["clipped"] == 1  # img0 #0 and #3 (clipped at the corner), img1 #0
    assert reasons(out) == [  # in the annotations' order (files sorted by name)
        ("broken.jpg", "0", "unreadable image"), ("gone.png", "0", "image not found"),
        ("img0.png", "1", "box outside the image"), ("img0.png", "2", "empty box"),
        ("img1.png", "1", "bad annotation"), ("mangled", "-1", "bad annotation")]
    assert result["errors"]["box outside the image"] == 1 and sum(result["errors"].values()) == 6
    assert [label for _, label in list_labelled(out)] == ["WBC"] * 3


def test_image_labels_name_every_box_of_their_image(tmp_path):
    write_images(tmp_path, n=3)
    (tmp_path / "b.csv").write_text("image,x,y,w,h\nimg0,0,0,9,9\nimg1,0,0,9,9\nimg1,20,0,9,9\nimg2,0,0,9,9\n")
    (tmp_path / "labels.csv").write_text("image,subtype\nimg0.png,neutrophil\nimg1,eosinophil\nimg2,\n")
    every = run_crops(tmp_path / "b.csv", tmp_path / "a", image_labels=tmp_path / "labels.csv")
    assert every["classes"] == {"eosinophil": 2, "neutrophil": 1}
    assert reasons(tmp_path / "a") == [("img2", "0", "no image label")]
    single = run_crops(tmp_path / "b.csv", tmp_path / "b", image_labels=tmp_path / "labels.csv", one_per_image=True)
    assert single["classes"] == {"neutrophil": 1} and single["skipped"] == {"several boxes in one image": 2}


# ------------------------------------------------------------------ the command


def test_the_command_writes_crops_and_refuses_bad_input_with_exit_code_2(tmp_path, capsys):
    from activessf.cli import main

    write_images(tmp_path)
    (tmp_path / "b.csv").write_text("image,x,y,w,h,label\nimg0,0,0,9,9,A\n")
    out = str(tmp_path / "out")
    assert main(["crops", "--annotations", str(tmp_path / "b.csv"), "--out", out, "--margin", "10%"]) == 0
    assert "1 crops from 1 annotations" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "crops.json").read_text())["arguments"]["margin"] == "10%"
    assert main(["crops", "--annotations", str(tmp_path / "b.csv"), "--out", out]) == 2
    assert "already holds outputs" in capsys.readouterr().err
    bad = [["--format", "pascal"], ["--format", "coco"], ["--margin", "-3"]]
    for extra in bad:
        assert main(["crops", "--annotations", str(tmp_path / "b.csv"), "--out", str(tmp_path / "x"), *extra]) == 2
    err = capsys.readouterr().err
    assert "use --format voc, coco or csv" in err and "not a JSON file" in err and "must be zero or more" in err
    (tmp_path / "b.txt").write_text("")
    assert main(["crops", "--annotations", str(tmp_path / "b.txt"), "--out", str(tmp_path / "x")]) == 2
    assert "pass --format" in capsys.readouterr().err and not (tmp_path / "x").exists()


# ------------------------------------------------------------------ real data


def test_bccd_gives_one_crop_per_wbc_box_and_its_subtypes(bccd, tmp_path):
    # Facts of the data (checked against its XML and CSV): 372 WBC boxes in 358 images; wbc_subtypes.csv names
    # 348 images, 6 of them without a WBC box; the 16 images with WBC boxes but no subtype hold 29 boxes.
    wbc = run_crops(bccd, tmp_path / "wbc", keep=["WBC"], size=24)
    assert wbc["crops"] == 372 and wbc["images"] == 358 and wbc["errors"] == {}
    assert wbc["skipped"] == {"not kept": 4155 + 361} and len(list_labelled(tmp_path / "wbc")) == 372
    sub = run_crops(bccd, tmp_path / "sub", keep=["WBC"], image_labels=bccd / "wbc_subtypes.csv", size=24)
    assert sub["classes"] == {"basophil": 2, "eosinophil": 84, "lymphocyte": 33, "monocyte": 20, "neutrophil": 204}
    assert sub["crops"] == 343 and sub["errors"] == {"no image label": 29}
    assert read_rgb(tmp_path / "sub" / "contact_sheet_neutrophil.png").shape[:2] == (804, 804)  # capped: 8 x 8
    assert cv2.imread(str(tmp_path / "sub" / "contact_sheet_basophil.png")).shape[:2] == (104, 204)
