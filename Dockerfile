# RetinaNet on a CUDA PyTorch runtime image. The entrypoint is the `retinanet` command.
#
# Build:
#   docker build -t retinanet .
# Mount COCO at /data/coco (train2017/, val2017/, annotations/) and a folder for outputs, then:
#   docker run --gpus all --shm-size 8g -v /path/to/coco:/data/coco:ro -v $PWD/output:/workspace/output retinanet \
#       train --config configs/coco/retinanet_R50_FPN_1x.yaml \
#       data.train.images=/data/coco/train2017 data.train.annotations=/data/coco/annotations/instances_train2017.json \
#       data.val.images=/data/coco/val2017 data.val.annotations=/data/coco/annotations/instances_val2017.json \
#       train.output_dir=/workspace/output/r50_1x
#   docker run --gpus all -v /path/to/coco:/data/coco:ro -v $PWD/output:/workspace/output retinanet \
#       eval --config configs/coco/retinanet_R50_FPN_1x.yaml --weights /workspace/output/r50_1x/model_final.pth \
#       data.val.images=/data/coco/val2017 data.val.annotations=/data/coco/annotations/instances_val2017.json \
#       --output /workspace/output/r50_1x/eval
#   docker run --gpus all -v $PWD/images:/images:ro -v $PWD/output:/workspace/output retinanet \
#       infer --weights /workspace/output/r50_1x/model_final.pth --input /images --output /workspace/output/drawn
# (--shm-size: data-loader workers share batches through /dev/shm.)
FROM pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /workspace
COPY setup.py README.md constraints.txt ./
COPY retinanet ./retinanet
COPY configs ./configs
# The same install as the README and .ci/run: setup.py's ranges, pinned by constraints.txt to the tested
# versions. The base image holds exactly the pinned torch build, so pip keeps its CUDA wheels
# (tests/test_packaging.py checks that the image tag and the pin agree).
RUN pip install -c constraints.txt -e .

ENTRYPOINT ["retinanet"]
CMD ["--help"]
