"""Redaction of secrets (``trainviz.core.redact``): every name of the issue's list caught and every harmless
look-alike kept, in a mapping and in each command-line form; URLs; hyperparameters at any depth through dicts,
lists, dataclasses, ``argparse.Namespace``, Lightning's ``AttributeDict``, OmegaConf and pydantic; JSON arguments;
the list of redacted paths (never a value); extra names; redaction off."""

from __future__ import annotations

import dataclasses
import json
from argparse import Namespace

import pytest

from trainviz.core.redact import (
    REDACTED,
    Redactor,
    check_patterns,
    name_parts,
    redact_manifest,
    strip_url_credentials,
)

SECRET = "Zq9xS3CR3Tv4lue"

SECRET_NAMES = [
    "api_key",
    "API_KEY",
    "apiKey",
    "ApiKey",
    "apikey",
    "wandb_api_key",
    "x-api-key",
    "api_keys",
    "access_key",
    "aws_secret_access_key",
    "AWS_ACCESS_KEY_ID",
    "secret",
    "secrets",
    "client_secret",
    "SecretKey",
    "password",
    "db_password",
    "dbPassword",
    "PASSWORD",
    "passwords",
    "passwd",
    "pwd",
    "mysql_pwd",
    "credential",
    "credentials",
    "gcp_credentials",
    "auth_token",
    "authToken",
    "token",
    "TOKEN",
    "hf_token",
    "HF_TOKEN",
    "access_token",
    "github-token",
    "s3.session.token",
    "refresh_token",
    "bearer",
    "bearer_token",
    "private_key",
    "privateKey",
    "ssh_private_key",
    "passphrase",
    "authorization",
]

HARMLESS_NAMES = [
    "num_prefix_tokens",
    "class_token",
    "cls_token",
    "dist_token",
    "reg_token",
    "pad_token",
    "mask_token",
    "eos_token",
    "key_dim",
    "keypoints",
    "keypoint_names",
    "author",
    "authors",
    "tokens",
    "max_tokens",
    "tokenizer",
    "token_dim",
    "pad_token_id",
    "key",
    "monkey",
    "keyword",
    "secretary",
    "passage",
    "lr",
    "batch_size",
    "access",
    "private",
]


def test_name_parts_split_on_separators_and_camel_case():
    assert name_parts("aws.secret-access_KEY") == ("aws", "secret", "access", "key")
    assert name_parts("awsSecretAccessKey") == ("aws", "secret", "access", "key")
    assert name_parts("HTTPAuthToken") == ("http", "auth", "token")
    assert name_parts("--num_prefix_tokens") == ("num", "prefix", "tokens")
    assert name_parts("") == ()


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_secret_names_are_redacted_in_a_mapping_and_in_every_command_line_form(name):
    assert Redactor().is_secret(name)
    r = Redactor()
    out = r.plain({name: SECRET, "other": "kept"}, "hparams")
    assert out == {name: REDACTED, "other": "kept"}
    assert r.redacted == [f"hparams.{name}"]
    args = ["train.py", f"--{name}={SECRET}", f"--{name}", SECRET, f"model.cfg.{name}={SECRET}", f"+{name}={SECRET}"]
    r = Redactor()
    assert r.argv(args) == [
        "train.py",
        f"--{name}={REDACTED}",
        f"--{name}",
        REDACTED,
        f"model.cfg.{name}={REDACTED}",
        f"+{name}={REDACTED}",
    ]
    assert r.redacted == ["argv[1]", "argv[3]", "argv[4]", "argv[5]"]
    # inside any string: a repr, a DSN, a query string
    text = Redactor().text(f"Cfg({name}='{SECRET}', n=3) host=db {name}={SECRET} x?{name}={SECRET}&v=1")
    assert SECRET not in text and "n=3" in text and "host=db" in text and "&v=1" in text


@pytest.mark.parametrize("name", HARMLESS_NAMES)
def test_harmless_names_are_kept_in_a_mapping_and_in_every_command_line_form(name):
    r = Redactor()
    assert not r.is_secret(name)
    assert r.plain({name: "value"}, "hparams") == {name: "value"}
    args = ["train.py", f"--{name}=value", f"--{name}", "value", f"a.b.{name}=value"]
    assert r.argv(args) == args
    assert r.text(f"{name}=value, {name}: value") == f"{name}=value, {name}: value"
    assert r.redacted == []


def test_booleans_and_none_under_a_secret_name_are_kept_numbers_and_containers_are_not():
    r = Redactor()
    out = r.plain(
        {"use_auth_token": True, "token": None, "password": 123456, "credentials": {"user": "me", "key": SECRET}},
        "h",
    )
    assert out == {
        "use_auth_token": True,
        "token": None,
        "password": REDACTED,
        "credentials": {"user": REDACTED, "key": REDACTED},
    }
    assert r.redacted == ["h.password", "h.credentials.user", "h.credentials.key"]


@pytest.mark.parametrize(
    "text, expected",
    [
        (f"postgresql://user:{SECRET}@db.example:5432/x", "postgresql://user:***@db.example:5432/x"),
        (f"postgresql://user:p@ss{SECRET}@db/x", "postgresql://user:***@db/x"),  # an unencoded @ in the password
        (f"https://{SECRET}@github.com/o/r.git", "https://***@github.com/o/r.git"),  # a token as the user
        (f"https://x-access-token:{SECRET}@github.com/o/r", "https://x-access-token:***@github.com/o/r"),
        ("ssh://git@github.com/o/r.git", "ssh://git@github.com/o/r.git"),  # a user alone, not http: kept
        ("git@github.com:o/r.git", "git@github.com:o/r.git"),
        ("postgresql://user@db/x", "postgresql://user@db/x"),
        ("http://host:8080/path?epochs=3", "http://host:8080/path?epochs=3"),
        (f"https://hub/x?token={SECRET}&rev=main", "https://hub/x?token=***&rev=main"),
        (f"https://hub/x?rev=main&api_key={SECRET}", "https://hub/x?rev=main&api_key=***"),
        (f"https://acct.blob/c/f?sv=2022&sig={SECRET}", "https://acct.blob/c/f?sv=2022&sig=***"),
        (
            f"s3://b/k?X-Amz-Credential={SECRET}&X-Amz-Signature={SECRET}&X-Amz-Expires=60",
            "s3://b/k?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Expires=60",
        ),
        (f"https://maps/api?key={SECRET}", "https://maps/api?key=***"),
        (f"https://cb#access_token={SECRET}&state=1", "https://cb#access_token=***&state=1"),
        (
            f"a https://u:{SECRET}@h1/x and ftp://v:{SECRET}@h2/y",
            "a https://u:***@h1/x and ftp://v:***@h2/y",
        ),
        (f"Authorization: Bearer {SECRET}", "Authorization: Bearer ***"),
        (f"authorization=Basic {SECRET}=", "authorization=Basic ***"),
        (f"-H 'Bearer {SECRET}'", "-H 'Bearer ***'"),
        (f"Config(password='{SECRET}', lr=0.1)", "Config(password='***', lr=0.1)"),
        (f'{{"db": {{"password": "{SECRET}"}}}}', '{"db": {"password": "***"}}'),
        (f"host=db user=me password={SECRET} dbname=x", "host=db user=me password=*** dbname=x"),
        ("/data/runs/epoch=3-step=100.ckpt", "/data/runs/epoch=3-step=100.ckpt"),
    ],
)
def test_credentials_inside_strings(text, expected):
    r = Redactor()
    assert r.text(text, "s") == expected
    assert r.redacted == ([] if text == expected else ["s"])


def test_git_remotes_lose_their_credentials():
    assert (
        strip_url_credentials(f"https://oauth2:{SECRET}@gitlab.com/g/p.git") == "https://oauth2:***@gitlab.com/g/p.git"
    )
    assert strip_url_credentials(f"https://{SECRET}@github.com/o/r") == "https://***@github.com/o/r"
    assert strip_url_credentials("https://github.com/o/r.git") == "https://github.com/o/r.git"
    assert strip_url_credentials(None) is None


@dataclasses.dataclass
class Storage:
    bucket: str
    secret_access_key: str
    endpoint: str


class Opaque:
    def __repr__(self) -> str:
        return f"Opaque(api_key='{SECRET}', size=3)"


def _hparams():
    from pytorch_lightning.utilities.parsing import AttributeDict

    return AttributeDict(
        lr=0.1,
        class_token=True,
        num_prefix_tokens=1,
        storage=Storage("bkt", SECRET, f"https://me:{SECRET}@minio.local:9000"),
        args=Namespace(epochs=3, hf_token=SECRET),
        runs=[{"name": "a", "db": {"password": SECRET}}, ("x", {"token": SECRET})],
        tags={"only"},
        opaque=Opaque(),
        nan=float("nan"),
    )


def test_hyperparameters_at_any_depth_through_every_container():
    r = Redactor()
    out = r.plain(_hparams(), "hparams")
    assert SECRET not in json.dumps(out)
    assert out == {
        "lr": 0.1,
        "class_token": True,
        "num_prefix_tokens": 1,
        "storage": {"bucket": "bkt", "secret_access_key": "***", "endpoint": "https://me:***@minio.local:9000"},
        "args": {"epochs": 3, "hf_token": "***"},
        "runs": [{"name": "a", "db": {"password": "***"}}, ["x", {"token": "***"}]],
        "tags": ["only"],
        "opaque": "Opaque(api_key='***', size=3)",
        "nan": None,
    }
    assert r.redacted == [
        "hparams.storage.secret_access_key",
        "hparams.storage.endpoint",
        "hparams.args.hf_token",
        "hparams.runs[0].db.password",
        "hparams.runs[1][1].token",
        "hparams.opaque",
    ]
    assert SECRET not in json.dumps(r.redacted)


def test_omegaconf_configs_are_redacted_structurally_with_interpolations_unresolved(monkeypatch):
    omegaconf = pytest.importorskip("omegaconf")
    monkeypatch.setenv("TRAINVIZ_TEST_DB_URL", f"postgresql://me:{SECRET}@db/x")
    cfg = omegaconf.OmegaConf.create(
        {
            "model": {"lr": 0.1, "key_dim": 64},
            "data": {"s3": {"secret_access_key": SECRET, "bucket": "b"}, "urls": [f"https://h/x?token={SECRET}"]},
            "db": "${oc.env:TRAINVIZ_TEST_DB_URL}",  # resolving it would pull the secret in from the environment
            "lr2": "${model.lr}",
        }
    )
    r = Redactor()
    out = r.plain({"cfg": cfg, "part": cfg.data}, "hparams")
    assert out["cfg"] == {
        "model": {"lr": 0.1, "key_dim": 64},
        "data": {"s3": {"secret_access_key": "***", "bucket": "b"}, "urls": ["https://h/x?token=***"]},
        "db": "${oc.env:TRAINVIZ_TEST_DB_URL}",
        "lr2": "${model.lr}",
    }
    assert out["part"] == out["cfg"]["data"]
    assert SECRET not in json.dumps(out)
    assert "hparams.cfg.data.s3.secret_access_key" in r.redacted and "hparams.part.urls[0]" in r.redacted


def test_pydantic_models_are_redacted_structurally():
    pydantic = pytest.importorskip("pydantic")

    class Settings(pydantic.BaseModel):
        name: str
        api_key: str

    r = Redactor()
    assert r.plain({"settings": Settings(name="n", api_key=SECRET)}) == {"settings": {"name": "n", "api_key": "***"}}
    assert r.redacted == ["settings.api_key"]


def test_json_arguments_are_parsed_redacted_and_written_back_only_when_needed():
    blob = json.dumps({"s3": {"secret_access_key": SECRET, "region": "eu"}, "lr": 0.1})
    plain_blob = '{"lr":0.1,  "layers": [1, 2]}'  # nothing secret: kept byte for byte
    r = Redactor()
    out = r.argv(["train.py", blob, f"--config={blob}", "--config", blob, plain_blob, f"--cfg={plain_blob}"])
    expected = json.dumps({"s3": {"secret_access_key": "***", "region": "eu"}, "lr": 0.1})
    assert out[:5] == ["train.py", expected, f"--config={expected}", "--config", expected]
    assert out[5:] == [plain_blob, f"--cfg={plain_blob}"]
    assert r.redacted == [f"argv[{i}].s3.secret_access_key" for i in (1, 2, 4)]


def test_command_line_details():
    r = Redactor()
    args = [
        "train.py",
        "--password",  # a flag followed by an option: nothing to redact
        "--epochs",
        "3",
        f"--db=postgresql://me:{SECRET}@db/x",
        f"HF_TOKEN={SECRET}",
        f"~trainer.logger.api_key={SECRET}",
        f"--out=s3://b/run?sig={SECRET}",
        "-p",
        "8",
    ]
    assert r.argv(args, path="command", start=1) == [
        "train.py",
        "--password",
        "--epochs",
        "3",
        "--db=postgresql://me:***@db/x",
        "HF_TOKEN=***",
        "~trainer.logger.api_key=***",
        "--out=s3://b/run?sig=***",
        "-p",
        "8",
    ]
    assert r.redacted == ["command[5]", "command[6]", "command[7]", "command[8]"]


def test_extra_names_add_to_the_list_by_whole_parts():
    r = Redactor(["wandb_key", "Salt"])
    assert r.plain({"wandb_key": "k", "wandbKey": "k", "salt": "s", "pepper_salt": "s", "salty": "x"}) == {
        "wandb_key": "***",
        "wandbKey": "***",
        "salt": "***",
        "pepper_salt": "***",
        "salty": "x",
    }
    assert r.argv(["--wandb-key", "k"]) == ["--wandb-key", "***"]
    assert not Redactor().is_secret("salt")
    assert Redactor().is_secret("wandb_key")  # any `<word>_key` but harmless ones (sort_key) is a secret by default


def test_provider_keys_and_command_lines_inside_recorded_values_are_redacted():
    r = Redactor()
    for name in ("openai_key", "hf_key", "stripe_key", "wandbKey"):
        assert r.is_secret(name), name
    for name in ("sort_key", "rng_key", "image_key", "key", "cfg.key", "key_dim", "keypoints"):
        assert not r.is_secret(name), name
    assert r.plain({"cmd": "python train.py --api-key=abc --password hunter2 --lr 0.1"}) == {
        "cmd": "python train.py --api-key=*** --password *** --lr 0.1"
    }
    assert r.plain({"args": ["--hf-token", "xyz", "--db-password=p", "--epochs", "3"]}) == {
        "args": ["--hf-token", "***", "--db-password=***", "--epochs", "3"]
    }
    assert r.redacted == ["cmd", "args[1]", "args[2]"]


def test_check_patterns():
    assert check_patterns("wandb_key") == ("wandb_key",)
    assert check_patterns(["a", "b_c"]) == ("a", "b_c")
    for bad in (3, None, [""], ["__"], [1], {"a": 1}):
        with pytest.raises(ValueError, match=r"Expected `redact` to be True, False, a name pattern"):
            check_patterns(bad)


def test_disabled_redactor_converts_and_redacts_nothing():
    r = Redactor(enabled=False)
    assert r.argv(["--api-key", SECRET, f"--db=https://u:{SECRET}@h"]) == [
        "--api-key",
        SECRET,
        f"--db=https://u:{SECRET}@h",
    ]
    out = r.plain(_hparams())
    assert out["storage"]["secret_access_key"] == SECRET and out["nan"] is None and out["tags"] == ["only"]
    assert r.redacted == []


def test_an_old_manifest_is_scrubbed_as_a_new_one_is_written():
    """The record an earlier trainviz wrote: the command line verbatim, hyperparameters as plain values or as a
    ``repr``; scrubbed twice, it stays the same."""
    old = {
        "command": ["/usr/bin/python", "train.py", "--hf-token", SECRET, f"--db=mysql://u:{SECRET}@h/x", "--lr=0.1"],
        "cwd": "/home/me/project",
        "git": {"commit": "abc", "dirty": False},
        "model": {"class": "Net", "hparams": {"lr": 0.1, "s3": {"secret": SECRET}, "cfg": f"Cfg(pwd='{SECRET}')"}},
        "data": {"class": "DM", "hparams": {}},
        "trainer": {"max_epochs": 3, "ckpt_path": None},
        "budget": {"training_seconds": 1.5},
    }
    new = redact_manifest(old, extra=["salt"])
    assert SECRET not in json.dumps(new)
    assert new["command"] == ["/usr/bin/python", "train.py", "--hf-token", "***", "--db=mysql://u:***@h/x", "--lr=0.1"]
    assert new["model"]["hparams"] == {"lr": 0.1, "s3": {"secret": "***"}, "cfg": "Cfg(pwd='***')"}
    assert {k: new[k] for k in ("cwd", "git", "data", "trainer", "budget")} == {
        k: old[k] for k in ("cwd", "git", "data", "trainer", "budget")
    }
    expected = ["command[3]", "command[4]", "model.hparams.s3.secret", "model.hparams.cfg"]
    assert new["redaction"] == {"enabled": True, "extra_names": ["salt"], "redacted": expected}
    assert redact_manifest(new, extra=["salt"]) == new
