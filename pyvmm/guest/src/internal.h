/* internal.h - what the runtime's own files share and guests do not see. */
#ifndef PYVMM_RT_INTERNAL_H
#define PYVMM_RT_INTERNAL_H

void rt_print_lock(void);
void rt_print_unlock(void);

#endif
