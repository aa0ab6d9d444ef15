"""Adds the index tansu 0.6's sqlite schema lacks on its `header` table (see
index_broker_headers in scripts/lib.sh). Exit 0: indexed (or already); 1: tansu has not
created its schema yet; 2: usage."""
import sqlite3
import sys

if len(sys.argv) != 2:
    print("usage: index_tansu_headers.py <tansu.db>", file=sys.stderr)
    sys.exit(2)
con = sqlite3.connect(sys.argv[1], timeout=30)
have = con.execute("select 1 from sqlite_master where type='table' and name='header'").fetchone()
if not have:
    sys.exit(1)
con.execute("create index if not exists payrail_header_by_record on header (topition, offset_id)")
con.commit()
