# cython: language_level=3
# The register-blocked kernel (_blocked.pyx) built for AVX-512: compiled only by portable builds
# (FASTCONV_PORTABLE=1, see setup.py), whose baseline _blocked has no FMA vectors; fastconv's Cython backend
# imports it on CPUs that have them.
include "_blocked.pyx"
