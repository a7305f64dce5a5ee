#!/usr/bin/env bash
# Build the MMDetection peer environment (.venv-mmdet), separate from dynrcnn's .venv:
# dynrcnn never depends on MMDetection; this environment holds both, to run them side by side.
#   1. dynrcnn itself (-e .), which brings the same torch / torchvision as .venv;
#   2. mmdet 3.3.0, mmengine 0.10.7 and mmcv-lite 2.1.0 without their dependency lists
#      (mmdet asserts mmcv < 2.2; mmcv 2.x ships only a source archive, see README);
#   3. what they import at run time (peer_mmdet/runtime.txt);
#   4. peer_mmdet/mmcv_ext.py installed as mmcv/_ext.py (the stand-in for the compiled ops).
# Idempotent: make calls it only when its inputs changed; it prints how long it took.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-mmdet}
PYTHON=${PYTHON:-python3}
start=$(date +%s)
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e .
"$VENV/bin/python" -m pip install -q --no-deps -r peer_mmdet/requirements.txt
"$VENV/bin/python" -m pip install -q -r peer_mmdet/runtime.txt
site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
cp peer_mmdet/mmcv_ext.py "$site/mmcv/_ext.py"
"$VENV/bin/python" -c "import mmdet.models, mmcv, mmengine, torch; print(f'mmdet {mmdet.__version__}, mmcv-lite {mmcv.__version__}, mmengine {mmengine.__version__}, torch {torch.__version__}')"
echo "mmdet-env: $VENV built in $(( $(date +%s) - start )) s"
