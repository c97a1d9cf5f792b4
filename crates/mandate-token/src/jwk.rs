//! Public JSON Web Keys from outside Mandate: parsing, verification and RFC 7638 thumbprints.
