/* sim_summary.h - the LLM simulator's deterministic "model": an extractive
 * summary of a prompt.
 *
 * The source is the text inside <text>...</text> sections of the prompt
 * (each section its own paragraph), or the whole prompt when it has none.
 * It is split into paragraphs at blank lines; from each paragraph the first
 * sentence is taken (a sentence ends at '.', '!' or '?' followed by
 * whitespace or the end; a paragraph without one is taken whole, cut to 40
 * words with "..." appended).  Sentences are joined with single spaces,
 * whitespace inside them collapsed to single spaces, while they fit in
 * word_limit words: the first sentence is always used (cut to word_limit
 * words with "..." if longer), and the first later sentence that would go
 * past the limit ends the summary.  The same input always gives the same
 * output, byte for byte. */
#ifndef SHEAF_SIM_SUMMARY_H
#define SHEAF_SIM_SUMMARY_H

#include <stddef.h>

/* Words a paragraph without a sentence end is cut to. */
#define SIM_SUMMARY_PARAGRAPH_WORDS 40

/* The mark a summary answer ends with: "(sim:" 6 hex digits ")" (see
 * sim_answer.h).  Source words that are such marks are skipped, so a mark
 * never travels from one stage's answer into the next one's. */
#define SIM_TAG_LEN 12
int sim_is_tag(const char *w, size_t len);

/* Returns the malloc'd summary of text[0..len) (possibly ""), at most
 * word_limit words (values below 1 count as 1); NULL only when out of
 * memory.  The caller frees it. */
char *sim_summary(const char *text, size_t len, int word_limit);

/* Cuts s in place to its longest prefix (ending on a UTF-8 character
 * boundary, trailing spaces dropped) whose sheaf_estimate_tokens() is at
 * most max_tokens, and returns the new length (len when it already fits).
 * Used to honour a request's max_tokens the way a real model stops: in the
 * middle of the text, with finish_reason "length". */
size_t sim_cut_to_tokens(char *s, size_t len, unsigned max_tokens);

/* One sentence inside the text sim_sentences() makes: text[off..off+len). */
typedef struct sim_span {
    size_t off, len;
} sim_span;

/* Splits text[0..len) into all its sentences by the rules above (a sentence
 * ends at '.', '!' or '?' followed by whitespace or the end, or at the end
 * of its paragraph; <text> tags are not special here).  *joined receives
 * the sentences with whitespace collapsed, separated by single spaces, and
 * *spans (*count of them) where each one is in it.  The caller frees both
 * (they are NULL when *count is 0).  Returns -1 when out of memory. */
int sim_sentences(const char *text, size_t len, char **joined, sim_span **spans,
                  size_t *count);

#endif
