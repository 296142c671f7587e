"""Convert downloaded public math datasets to sfpo_rl's format; see README.md here for the expected files.

python recipes/preprocess/convert.py gsm8k ~/data/gsm8k/main/train-00000-of-00001.parquet -o data/gsm8k_train.parquet
"""

import sys

from sfpo_rl.data.preprocess import main

if __name__ == "__main__":
    sys.exit(main())
