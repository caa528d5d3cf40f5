// SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only
//
// Cove's share guard: a BPF LSM program, loaded by the agent at boot
// (guest_engine/boot/shareguard.py), that refuses to put a set-uid or set-gid bit on a
// file in a host share. QEMU's 9p device and virtiofsd apply a guest's chmod to the
// host's file as it is, so without this a container could leave a set-uid program in a
// host folder (owned by root when Cove runs as root) for any local user to run. Cove's own
// 9P server (the "link" transport) strips those bits on the host as well.
//
// Host shares are the VM's only 9p and FUSE (virtiofs) filesystems. The hooks:
//   path_chmod  chmod, fchmod, fchmodat and fchmodat2 (cp -p, tar, install -m);
//   path_mknod  open(O_CREAT) and mknod, which can create a file with the bits set.
// A folder keeps its set-gid bit (group inheritance, never run as a program).
//
// Built without libbpf's headers: the kernel structures below name only the fields read,
// and their offsets are relocated to the running kernel's (CO-RE) when libbpf loads it.
// The object is the same for every little-endian guest (amd64 and arm64).

typedef unsigned short umode_t;
typedef unsigned long long u64;

#define SEC(name) __attribute__((section(name), used))
#define CORE __attribute__((preserve_access_index))

struct super_block {
	unsigned long s_magic;
} CORE;

struct inode {
	umode_t i_mode;
} CORE;

struct dentry {
	struct inode *d_inode;
	struct super_block *d_sb;
} CORE;

struct path {
	struct dentry *dentry;
} CORE;

#define V9FS_MAGIC 0x01021997UL
#define FUSE_SUPER_MAGIC 0x65735546UL
#define S_IFMT 00170000
#define S_IFDIR 0040000
#define S_ISUID 0004000
#define S_ISGID 0002000
#define EPERM 1

// The verifier wants each return value proven within [-4095, 0]; clang would otherwise
// fold "shared ? -EPERM : 0" into arithmetic (a negation) whose range it cannot follow.
#define DENY() do { asm volatile("" ::: "memory"); return -EPERM; } while (0)

static __attribute__((always_inline)) int shared(const struct dentry *d)
{
	unsigned long magic = d->d_sb->s_magic;

	return magic == V9FS_MAGIC || magic == FUSE_SUPER_MAGIC;
}

// ctx: the hook's arguments, then the return value of the LSMs before this one.
SEC("lsm/path_chmod")
int cove_share_chmod(u64 *ctx)
{
	const struct path *path = (const struct path *)ctx[0];
	umode_t mode = (umode_t)ctx[1];
	int ret = (int)ctx[2];

	if (ret != 0 || !(mode & (S_ISUID | S_ISGID)))
		return ret;
	if (!shared(path->dentry))
		return 0;
	if ((path->dentry->d_inode->i_mode & S_IFMT) == S_IFDIR && !(mode & S_ISUID))
		return 0;
	DENY();
}

SEC("lsm/path_mknod")
int cove_share_mknod(u64 *ctx)
{
	const struct path *dir = (const struct path *)ctx[0];
	umode_t mode = (umode_t)ctx[2];
	int ret = (int)ctx[4];

	if (ret != 0 || !(mode & (S_ISUID | S_ISGID)))
		return ret;
	if (shared(dir->dentry))
		DENY();
	return 0;
}

// The kernel loads an LSM program only under a GPL-compatible licence, hence this file's
// dual licence.
char LICENSE[] SEC("license") = "GPL";
