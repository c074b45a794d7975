// Package backup is a center's backup repository: a content-addressed
// chunk store on a directory (a local disk or an NFS mount), modelled on
// Proxmox Backup Server's datastore. Disks are cut into fixed 4 MiB chunks
// (the last one of a disk shorter); a chunk is stored once under its
// sha256, however many disks and restore points contain it, so a backup
// after the first stores only the chunks that changed. A manifest lists a
// disk's chunks in order; it is stored under the sha256 of its encoding,
// which the restore point's record (through raft) names, so neither a
// chunk nor a manifest can be swapped without the hash noticing.
//
// Layout under the repository's directory:
//
//	chunks/<first 2 hex digits>/<sha256 hex>   the chunk's raw bytes
//	chunks/<first 2 hex digits>/<sha256 hex>.bad   a chunk found damaged, moved aside
//	manifests/<sha256 hex>   a yunchi.v1.BackupManifest, deterministic encoding
//	tmp/                     partial writes, manifests being received
//
// Writes are atomic and durable: the bytes go to a file in tmp/, which is
// fsynced, renamed into place, and the directory fsynced; a reader sees a
// whole file or none. A chunk already present is not written again (only
// its modification time is refreshed, see below).
//
// Every read re-hashes what it read and never returns bytes that do not
// match their name. A chunk found damaged (by a read or by Verify) is
// renamed <sha256>.bad: the repository then reports it missing, so the
// next backup whose disk has those bytes sends them again, which heals
// every restore point using the chunk (Proxmox does the same). A damaged
// manifest stays where it is: the state names it, and putting the same
// manifest again rewrites it.
//
// Garbage collection and backups in flight. GC marks the chunks listed by
// the manifests it is told to keep (those of the retained restore points)
// and by every manifest younger than the grace period, then removes the
// other chunks and manifests, but only those whose modification time is
// older than the grace period. A backup in flight relies on chunks it did
// not send (they were present when it asked), and on manifests and chunks
// it wrote but whose point is not recorded yet; three rules keep those:
//
//   - Missing refreshes the modification time of every chunk it reports
//     present, PutChunk that of a chunk already there, and PutManifest
//     (ManifestWriter.Commit) that of every chunk the manifest lists: a chunk a backup was told
//     it need not send, or used, is young for a grace period from then.
//   - Missing, PutChunk and PutManifest hold the repository's sweep lock
//     shared while they look at and touch chunks; GC removes files in
//     batches holding it exclusively, and looks at each file's time again
//     under the lock before removing it. So a chunk is either removed
//     before a PutManifest looks for it (which then fails, listing what is
//     missing, and the agent sends it again) or touched before GC looks
//     again (and kept): a stored manifest never lists a removed chunk.
//   - Manifests are removed before chunks, so at no time does a manifest
//     in the repository list a chunk GC removed.
//
// A backup that takes longer than the grace period between learning that
// a chunk is present and putting its manifest may find the chunk gone;
// its PutManifest then fails cleanly and the agent sends what is missing.
// The caller of GC can widen the grace to cover the oldest running backup
// (controller/api does, for the jobs it has seen), as Proxmox does with
// its oldest writer.
//
// Manifests are streams (manifest.go): a 64 TiB disk's is 570 MB, so none
// is held in memory whole. One being put is received into a file in tmp/
// (CreateManifest), checked from there and renamed into place; one being
// read is streamed from its file and its hash checked at the end
// (OpenManifest, ScanManifest). Manifests are at most MaxManifestBytes
// long, of disks of at most 64 TiB.
//
// Verify and GC of one repository run one at a time. Memory: Verify holds
// one chunk (4 MiB) at a time, and the list of damage it found; GC holds
// the set of chunks the kept manifests list (about 64 bytes per distinct
// chunk: 16 MiB per TiB of distinct data).
package backup
