"""kdepth.data stands below the models: using it loads no kdepth.models module.

The static rule (no import of kdepth.models anywhere in kdepth/data, lazy ones included) is in
tests/test_layout.py; this test runs the data package and looks at what was loaded.
"""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_using_the_data_package_loads_no_model_module():
    code = (
        "import sys\n"
        "from kdepth.config import load_config\n"
        "from kdepth.data.check import check_source\n"
        "from kdepth.data.pipeline import dataset_from_config\n"
        "from kdepth.data.sources import open_source\n"
        "import kdepth.data.plan, kdepth.data.writer\n"
        "config = load_config([], ['data.synthetic_train=2', 'data.synthetic_val=1', 'data.synthetic_test=1',"
        " 'data.synthetic_size=[32, 32]', 'model.input_size=[32, 32]', 'train.batch_size=1'])\n"
        "ds, source = dataset_from_config(config, 'train', training=True)\n"
        "next(iter(ds))\n"
        "assert check_source(source).ok\n"
        "print(sorted(m for m in sys.modules if m.startswith('kdepth.models')))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
