#ifndef _FUZZ_COMMON_H_INCLUDED_
#define _FUZZ_COMMON_H_INCLUDED_

/*++
/* NAME
/*	fuzz_common 3h
/* SUMMARY
/*	support for libFuzzer targets of the tlsproxy(8) protocols
/* SYNOPSIS
/*	#include "fuzz_common.h"
/* DESCRIPTION
/* .nf

 /*
  * System library.
  */
#include <stdint.h>
#include <stddef.h>

 /*
  * Utility library.
  */
#include <attr.h>
#include <vstream.h>
#include <vstring.h>

 /*
  * An attribute encoding: how a stream is scanned and printed.
  */
typedef struct FUZZ_CODEC {
    const char *name;			/* "attr_scan0", "attr_scan_plain" */
    ATTR_SCAN_COMMON_FN scan;		/* attr_scan0, attr_scan_plain */
    ATTR_PRINT_COMMON_FN print;		/* attr_print0, attr_print_plain */
    int     scan_flags;			/* as the real caller passes them */
} FUZZ_CODEC;

extern const FUZZ_CODEC fuzz_codec_zero;	/* attr_scan(), STRICT */
extern const FUZZ_CODEC fuzz_codec_plain;	/* attr_scan_plain(), NONE */

typedef void (*FUZZ_FREE_FN) (void *);

extern void fuzz_init(void);
extern VSTREAM *fuzz_open(const uint8_t *, size_t);
extern void fuzz_close(VSTREAM *);
extern void fuzz_round_trip(const char *, const FUZZ_CODEC *,
			            ATTR_PRINT_CUSTOM_FN, ATTR_SCAN_CUSTOM_FN,
			            FUZZ_FREE_FN, const void *, int);
extern void fuzz_print(VSTRING *, const FUZZ_CODEC *,
		               ATTR_PRINT_CUSTOM_FN, const void *);

#define FUZZ_RT_FLAG_NONE	0
#define FUZZ_RT_FLAG_REORDERS	(1<<0)	/* a round trip may reorder lists */

 /*
  * The tlsproxy(8) request structures that tlsp_get_request_event() scans
  * with attr_scan() and RECV_ATTR_FUNC(): one target each.
  */
#define FUZZ_PROPS_CLIENT_PARAM	0	/* TLS_CLIENT_PARAMS */
#define FUZZ_PROPS_CLIENT_INIT	1	/* TLS_CLIENT_INIT_PROPS */
#define FUZZ_PROPS_CLIENT_START	2	/* TLS_CLIENT_START_PROPS */
#define FUZZ_PROPS_SERVER_INIT	3	/* TLS_SERVER_INIT_PROPS */
#define FUZZ_PROPS_SERVER_START	4	/* TLS_SERVER_START_PROPS */

extern int fuzz_props(int, const uint8_t *, size_t);

 /*
  * libFuzzer entry point.
  */
extern int LLVMFuzzerTestOneInput(const uint8_t *, size_t);

/* LICENSE
/* .ad
/* .fi
/*	The Secure Mailer license must be distributed with this software.
/*--*/

#endif
