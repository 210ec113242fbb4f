"""Active sample selection (paper Sec. II-C): prototypes, Eq. 8 thresholds, the store actor."""
