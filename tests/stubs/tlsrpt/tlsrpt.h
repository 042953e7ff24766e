/*
 * tlsrpt.h - test stub of the TLSRPT client library API
 *
 * A stand-in for the header of the sys4 TLSRPT client library (libtlsrpt),
 * declaring the types and functions that Postfix's src/tls/tlsrpt_wrapper.c
 * uses, so that Postfix can be built with -DUSE_TLSRPT where that library is
 * not available (Debian 12).  The implementation (tlsrpt.c) sends nothing
 * anywhere: it appends one line per call to a record file, which tests read
 * to count what smtp(8) and tlsproxy(8) reported.  Written for this project
 * from the calls that Postfix makes; not the library's own header.  Enum
 * values are this stub's own: Postfix passes them only between processes of
 * the same build.
 */
#ifndef TLSRPT_STUB_H
#define TLSRPT_STUB_H

#define TLSRPT_VERSION_MAJOR	0
#define TLSRPT_VERSION_MINOR	6
#define TLSRPT_VERSION_PATCH	0
#define TLSRPT_VERSION_STRING	"0.6.0-postfix-test-stub"

struct tlsrpt_connection_t;
struct tlsrpt_dr_t;

typedef enum {
    TLSRPT_POLICY_TLSA = 1,
    TLSRPT_POLICY_STS = 2,
    TLSRPT_NO_POLICY_FOUND = 9
} tlsrpt_policy_type_t;

typedef enum {
    TLSRPT_FINAL_SUCCESS = 0,
    TLSRPT_FINAL_FAILURE = 1
} tlsrpt_final_result_t;

typedef enum {
    TLSRPT_STARTTLS_NOT_SUPPORTED = 201,
    TLSRPT_CERTIFICATE_HOST_MISMATCH = 202,
    TLSRPT_CERTIFICATE_NOT_TRUSTED = 203,
    TLSRPT_CERTIFICATE_EXPIRED = 204,
    TLSRPT_VALIDATION_FAILURE = 205,
    TLSRPT_STS_POLICY_FETCH_ERROR = 301,
    TLSRPT_STS_POLICY_INVALID = 302,
    TLSRPT_STS_WEBPKI_INVALID = 303,
    TLSRPT_TLSA_INVALID = 304,
    TLSRPT_DNSSEC_INVALID = 305,
    TLSRPT_DANE_REQUIRED = 306,
    TLSRPT_UNFINISHED_POLICY = 399
} tlsrpt_failure_t;

extern int tlsrpt_version_check(int, int, int);
extern const char *tlsrpt_version(void);

extern int tlsrpt_open(struct tlsrpt_connection_t **, const char *);
extern int tlsrpt_close(struct tlsrpt_connection_t **);

extern int tlsrpt_init_delivery_request(struct tlsrpt_dr_t **,
					        struct tlsrpt_connection_t *,
					        const char *, const char *);
extern int tlsrpt_init_policy(struct tlsrpt_dr_t *, tlsrpt_policy_type_t,
			              const char *);
extern int tlsrpt_add_policy_string(struct tlsrpt_dr_t *, const char *);
extern int tlsrpt_add_mx_host_pattern(struct tlsrpt_dr_t *, const char *);
extern int tlsrpt_add_delivery_request_failure(struct tlsrpt_dr_t *,
					               tlsrpt_failure_t,
					               const char *, const char *,
					               const char *, const char *,
					               const char *, const char *);
extern int tlsrpt_finish_policy(struct tlsrpt_dr_t *, tlsrpt_final_result_t);
extern int tlsrpt_finish_delivery_request(struct tlsrpt_dr_t **);
extern int tlsrpt_cancel_delivery_request(struct tlsrpt_dr_t **);

extern int tlsrpt_error_code_is_internal(int);
extern int tlsrpt_errno_from_error_code(int);
extern const char *tlsrpt_strerror(int);

#endif
