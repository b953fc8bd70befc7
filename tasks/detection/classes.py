"""Class names and category ids of the detection data sets, one definition each (no heavy imports:
the model cards read them)."""

COCO_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)

# COCO's 91-id category numbering skips 10 ids that have no boxes in the 2017 release.
_COCO91_UNUSED = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
COCO80_TO_COCO91 = tuple(i for i in range(1, 91) if i not in _COCO91_UNUSED)
COCO91_TO_COCO80 = {c: i for i, c in enumerate(COCO80_TO_COCO91)}

# SpikeYOLO_for_Gen1/ultralytics/cfg/datasets/gen1.yaml: 0 car, 1 "persidian" (pedestrian).
GEN1_NAMES = ("car", "pedestrian")

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
# TDE config/EvDET200K.yaml, in that order.
EVDET200K_CLASSES = (
    "people", "car", "bicycle", "electric bicycle", "basketball", "ping_pong", "goose", "cat", "bird", "UAV",
)
# The zoo's synthetic demo data set (tasks.detection.synthetic), in label order.
SHAPES_CLASSES = ("circle", "square", "triangle", "cross", "ring", "diamond")
