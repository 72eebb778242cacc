"""The procedural 10-class demo set (tools/demo_images.py draws the images)."""



from tools import demo_images

from .writer import Split, default_out, encode_png, existing_set, write_dataset


def make_demo(out_dir=None, seed=0, num_train=5000, num_test=1000, force=False):
    """Writes the procedural demo set (tools/demo_images.py) to out_dir (default data/demo).

    Returns the dict stored in make_rec.json (dataset, options, classes, counts)."""
    if num_train < 1 or num_test < 1:
        raise ValueError(f"num_train and num_test must be positive, got {num_train} and {num_test}")
    out_dir = out_dir or default_out("demo")
    options = {"seed": seed, "num_train": num_train, "num_test": num_test}

    def split(name, count, stream):
        images, labels = demo_images.generate(count, [seed, stream])
        return Split(
            name,
            count,
            (
                (int(label), encode_png(image), f"{name}/{i:05d}.png")
                for i, (image, label) in enumerate(zip(images, labels))
            ),
        )

    kept = existing_set(out_dir, "demo", options, force)
    if kept:
        return kept
    return write_dataset(
        out_dir,
        "demo",
        options,
        demo_images.CLASS_NAMES,
        [split("train", num_train, 0), split("test", num_test, 1)],
    )
