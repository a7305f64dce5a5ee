#!/usr/bin/env bash
# Build the MMDetection peer environment (.venv-mmdet), separate from dynrcnn's .venv:
# dynrcnn never depends on MMDetection; this environment adds MMDetection on top of .venv to run
# both side by side. It is a layer, not a copy: a .pth file appends .venv's site-packages (and
# its .pth files, so dynrcnn's editable install too) after this venv's own. So the peer runs the
# very same torch / torchvision / dynrcnn as .venv and costs ~0.3 GB of disk instead of another
# ~6 GB CUDA build of torch (two full copies filled a CI machine's disk).
#   1. a venv whose site-packages ends with .venv's (BASE, default .venv; make builds it first);
#   2. peer_mmdet/requirements.lock, with --no-deps: mmdet 3.3.0, mmengine 0.10.7, mmcv-lite 2.1.0
#      (mmdet asserts mmcv < 2.2; mmcv 2.x ships only a source archive, see docs/mmdetection.md)
#      and what they import at run time (runtime.txt), every version and hash pinned by
#      `make lock`, which resolves them with requirements.lock as a constraint; pip installs here
#      only what .venv lacks, and never touches .venv ("outside environment");
#   3. peer_mmdet/mmcv_ext.py installed as mmcv/_ext.py (the stand-in for the compiled ops).
# Idempotent: make calls it only when its inputs changed; it prints how long it took.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-mmdet}
BASE=${BASE:-.venv}
PYTHON=${PYTHON:-python3}
start=$(date +%s)
if ! test -x "$BASE/bin/python"; then
    echo "mmdet-env: $BASE/bin/python is missing; build dynrcnn's environment first (make venv)" >&2
    exit 2
fi
base_site=$("$BASE/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# processed by site.py at start-up: .venv's packages come after this venv's own
echo "import site; site.addsitedir('$base_site')" > "$site/zz_dynrcnn_base.pth"
"$VENV/bin/python" -m pip install -q --no-deps -r peer_mmdet/requirements.lock
cp peer_mmdet/mmcv_ext.py "$site/mmcv/_ext.py"
"$VENV/bin/python" -c "import mmdet.models, mmcv, mmengine, torch, dynrcnn; print(f'mmdet {mmdet.__version__}, mmcv-lite {mmcv.__version__}, mmengine {mmengine.__version__}, torch {torch.__version__} from {torch.__file__}')"
echo "mmdet-env: $VENV built in $(( $(date +%s) - start )) s on top of $BASE ($(du -sh "$VENV" | cut -f1))"
